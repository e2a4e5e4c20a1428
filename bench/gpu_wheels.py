"""Downloads, into `.gpu-wheels/`, the wheels a lent GPU machine lacks to run `bench/gpu_check.py`.

The lent machines (the `device` tool) reach no package registry. Their image already holds
PyTorch 2.11 with torchaudio 2.11.0, transformers 5, NumPy, httpx and more for Python 3.12
(`../.library/device/KINDS.md`); what this service adds (BentoML and what it needs, soundfile,
pydantic, sse-starlette, standardwebhooks, redis) travels as wheels, installed there with
`pip install --no-deps --target`. Packages the image has are left out: a second copy would shadow
the image's (NumPy built for its PyTorch, say).

    .venv/bin/python bench/gpu_wheels.py      # or: make gpu-wheels

Then, through the device tool, with `carry: [".gpu-wheels"]` (docs/benchmarks.md, "On a GPU"):

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu-wheels/*.whl \\
      && PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --out $OUT/gpu-check.json
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / ".gpu-wheels"
# Installed in the image, so not carried: the device tool's package list of 2026-11-17 (KINDS.md),
# normalized.
IMAGE_PACKAGES = set(
    """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs build certifi
    charset-normalizer click cloudpickle colorama filelock frozenlist fsspec h11 hf-xet httpcore httpx
    huggingface-hub idna jinja2 markdown markdown-it-py markupsafe mdurl ml-dtypes msgpack multidict networkx
    numpy nvidia-ml-py packaging pathspec pillow pip prometheus-client propcache protobuf psutil pygments
    pyparsing python-dateutil pyyaml regex requests rich safetensors scipy sentencepiece setuptools shellingham
    six sympy tokenizers torch torchaudio tqdm transformers triton typer typing-extensions urllib3 uvloop
    wheel wrapt yarl""".split()  # noqa: SIM905 (a list as the page gives it)
)
# What the project needs that the image may lack: requirements.txt without the image's heavy ones.
SKIPPED_REQUIREMENTS = {"torch", "torchaudio", "transformers", "huggingface-hub", "tokenizers", "numpy", "httpx"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> list[str]:
    wanted = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and normalized(re.split(r"[<>=!~\[ ]", line)[0]) not in SKIPPED_REQUIREMENTS:
            wanted.append(line)
    return wanted


def main() -> int:
    shutil.rmtree(TARGET, ignore_errors=True)
    TARGET.mkdir()
    platforms = [argument for platform in PLATFORMS for argument in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--python-version", "3.12"]
    command += ["--implementation", "cp", *platforms, "--dest", str(TARGET), *requirements()]
    subprocess.run(command, check=True)
    kept = 0
    for wheel in sorted(TARGET.glob("*.whl")):
        if normalized(wheel.name.split("-")[0]) in IMAGE_PACKAGES:
            wheel.unlink()
        else:
            kept += wheel.stat().st_size
    names = sorted(wheel.name.split("-")[0] for wheel in TARGET.glob("*.whl"))
    print(f"{len(names)} wheels, {kept / 2**20:.1f} MiB in {TARGET}: {' '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
