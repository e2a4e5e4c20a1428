#!/usr/bin/env bash
# musicgen-bento's image set-up. BentoML runs it as root (bentofile.yaml, `docker.setup_script`) while
# `bentoml containerize` builds the image, after the Python packages are installed in /app/.venv.
set -euxo pipefail
# Ubuntu's tools only: BentoML has already put the service's venv (/app/.venv, no pip in it) first on PATH.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
unset VIRTUAL_ENV PYTHONPATH

# The volumes' mount points (see the README's "Deploying on a GPU node"). The service runs as BentoML's
# user `bentoml`, which must be able to write the model store, the output and the job queue; sources are only read.
mkdir -p /data/bentoml /data/output /data/jobs /data/input /data/uploads
chown bentoml:bentoml /data/bentoml /data/output /data/jobs /data/uploads

# What only the build needed. BentoML installs compilers and git on every image and needs Ubuntu's pip to
# install uv; the service runs uv's own Python in /app/python (UV_PYTHON_PREFERENCE=only-managed), so
# Ubuntu's Python goes too. Removed in a later layer, they still take space in the image but no longer exist
# in the container. apt's own "Suggests: dpkg-dev" would keep dpkg-dev, and through it gcc and make, unless
# suggestions are left out of what auto-removal keeps.
python3 -m pip uninstall -y uv
apt-get purge -y --auto-remove -o APT::AutoRemove::SuggestsImportant=false build-essential git python3-pip
apt-get clean
rm -rf /var/lib/apt/lists/* /root/.cache
