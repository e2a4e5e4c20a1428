"""The bento and its GPU image: `bentoml build` in a temporary BENTOML_HOME, what `bentoml containerize`
hands to Docker, the bento's contents, and the built bento served with a model from a separate store.

CI has no Docker engine: `bentoml containerize` runs for real against a stand-in `docker` that records
the build it is asked for, and the tests read that Dockerfile and build context.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import soundfile as sf
import yaml

from .conftest import BIN, ROOT, TINY_TEXT, Server, free_port, server_env, write_tone

Instruction = tuple[str, str]
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".h5", ".msgpack"}
TINY_LICENCE = "none: random weights generated locally, not a trained model"

# Answers BentoML's version check like Docker 28, then records the build instead of running it.
FAKE_DOCKER = """#!/usr/bin/env bash
if [ "$1" = "version" ]; then echo '"28.2.2"'; exit 0; fi
printf '%s\\n' "$@" > "$FAKE_DOCKER_OUT/args"
previous=""
for argument in "$@"; do
    if [ "$previous" = "--file" ]; then cp "$argument" "$FAKE_DOCKER_OUT/Dockerfile"; fi
    previous="$argument"
done
(cd "$previous" && find . -type f | sort) > "$FAKE_DOCKER_OUT/context"
"""


@dataclass(frozen=True)
class BuiltBento:
    tag: str
    path: Path
    home: Path


@dataclass(frozen=True)
class DockerBuild:
    """What `bentoml containerize` asked Docker to do."""

    args: list[str]
    dockerfile: str
    context: list[str]


@pytest.fixture(scope="module")
def bento(tmp_path_factory: pytest.TempPathFactory) -> BuiltBento:
    """Builds the project's bento once, with the project's bentofile, in a BENTOML_HOME of its own."""
    home = tmp_path_factory.mktemp("build-home")
    result = subprocess.run(
        [str(BIN / "bentoml"), "build", "--output", "tag"],
        cwd=ROOT,
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    tag = result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    return BuiltBento(tag=tag, path=home / "bentos" / name / version, home=home)


@pytest.fixture(scope="module")
def docker_build(bento: BuiltBento, tmp_path_factory: pytest.TempPathFactory) -> DockerBuild:
    """Runs `bentoml containerize` from the project root, as an operator would, against the stand-in docker."""
    tools = tmp_path_factory.mktemp("fake-docker")
    (tools / "docker").write_text(FAKE_DOCKER)
    (tools / "docker").chmod(0o755)
    env = {
        **os.environ,
        "BENTOML_HOME": str(bento.home),
        "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}",
        "FAKE_DOCKER_OUT": str(tools),
    }
    result = subprocess.run(
        [str(BIN / "bentoml"), "containerize", bento.tag, "--image-tag", "musicgen:test"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and (tools / "Dockerfile").is_file(), result.stdout[-2000:] + result.stderr[-4000:]
    return DockerBuild(
        args=(tools / "args").read_text().splitlines(),
        dockerfile=(tools / "Dockerfile").read_text(),
        context=(tools / "context").read_text().splitlines(),
    )


def instructions(dockerfile: str) -> list[Instruction]:
    """The Dockerfile's instructions as (KEYWORD, arguments): continuation lines joined, comments dropped."""
    found: list[Instruction] = []
    pending = ""
    for raw in dockerfile.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        found.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return found


def arguments_of(dockerfile: str, keyword: str) -> list[str]:
    return [arguments for found, arguments in instructions(dockerfile) if found == keyword]


def environment(dockerfile: str) -> dict[str, str]:
    """The environment the image ends with: ARG defaults feed `ENV K=$K`, later assignments win."""
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    for keyword, arguments in instructions(dockerfile):
        for name, value in re.findall(r"(\w+)=(\S+)", arguments):
            value = value.strip("'\"")
            if keyword == "ARG":
                args[name] = value
            elif keyword == "ENV":
                env[name] = args.get(value[1:], value) if value == f"${name}" else value
    return env


def setup_script(bento: BuiltBento) -> str:
    (script,) = (bento.path / "env" / "docker").glob("script__*")
    return script.read_text()


def bento_files(bento: BuiltBento) -> list[Path]:
    return sorted(path.relative_to(bento.path) for path in bento.path.rglob("*") if path.is_file())


# ---- bentoml containerize and the Dockerfile ----


def test_containerize_hands_docker_the_bento_with_no_other_step(docker_build: DockerBuild) -> None:
    assert docker_build.args[:3] == ["build", "--tag", "musicgen:test"]
    assert docker_build.args[-2].endswith("/env/docker/Dockerfile")
    assert {"./bento.yaml", "./src/service.py", "./env/python/requirements.txt"} <= set(docker_build.context)


def test_bento_keeps_the_dockerfile_that_containerize_builds(bento: BuiltBento, docker_build: DockerBuild) -> None:
    stored = (bento.path / "env" / "docker" / "Dockerfile").read_text()
    # containerize adds only BuildKit's cache mounts, which keep download caches out of the layers.
    assert instructions(stored) == instructions(re.sub(r"--mount=\S+ ?", "", docker_build.dockerfile))


def test_image_starts_from_the_cuda_ubuntu_image_of_torchs_cuda(bento: BuiltBento, docker_build: DockerBuild) -> None:
    lock = (bento.path / "env" / "python" / "requirements.txt").read_text()
    assert re.search(r"^torch==2\.11\.\d+$", lock, re.MULTILINE)
    # The CUDA runtime wheel the pinned torch pulls in is the CUDA the image must match.
    runtime = re.search(r"^nvidia-cuda-runtime(?:-cu\d+)?==(\d+\.\d+)\.", lock, re.MULTILINE)
    assert runtime is not None, "no nvidia-cuda-runtime wheel in the lock: is torch a CUDA build?"
    (image,) = [arguments.split()[0] for arguments in arguments_of(docker_build.dockerfile, "FROM")]
    assert re.fullmatch(rf"nvidia/cuda:{re.escape(runtime.group(1))}\.\d+-base-ubuntu(22|24)\.04", image), image


def test_image_installs_libsndfile(docker_build: DockerBuild) -> None:
    assert any(
        re.search(r"\bapt-get install\b.*\blibsndfile1\b", run) for run in arguments_of(docker_build.dockerfile, "RUN")
    )


def test_setup_script_removes_the_build_tools_after_the_packages_are_installed(
    bento: BuiltBento, docker_build: DockerBuild
) -> None:
    runs = arguments_of(docker_build.dockerfile, "RUN")
    installed = next(i for i, run in enumerate(runs) if "pip install -r" in run)
    set_up = next(i for i, run in enumerate(runs) if "./env/docker/script__" in run)
    assert set_up > installed
    script = setup_script(bento)
    purge = re.search(r"^apt-get purge -y --auto-remove (.*)$", script, re.MULTILINE)
    assert purge is not None
    # Without it, apt's "Suggests: dpkg-dev" keeps gcc and make installed.
    assert "-o APT::AutoRemove::SuggestsImportant=false" in purge.group(1)
    assert {"build-essential", "git", "python3-pip"} <= set(purge.group(1).split())
    assert re.search(r"^python3 -m pip uninstall -y uv$", script, re.MULTILINE)
    assert "rm -rf /var/lib/apt/lists/*" in script


def test_service_python_is_uvs_own_not_the_one_removed(docker_build: DockerBuild) -> None:
    # Ubuntu's python3 leaves with pip; the venv must not be built on it.
    assert environment(docker_build.dockerfile)["UV_PYTHON_PREFERENCE"] == "only-managed"
    assert any(
        "UV_PYTHON_INSTALL_DIR=/app/python/ uv venv" in run for run in arguments_of(docker_build.dockerfile, "RUN")
    )


def test_image_runs_as_the_non_root_bentoml_user(docker_build: DockerBuild) -> None:
    assert arguments_of(docker_build.dockerfile, "USER")[-1] == "bentoml"
    uid = re.search(r"^ARG BENTO_USER_UID=(\d+)$", docker_build.dockerfile, re.MULTILINE)
    assert uid is not None and int(uid.group(1)) != 0


def test_image_serves_the_bento_on_port_3000(bento: BuiltBento, docker_build: DockerBuild) -> None:
    assert "3000" in arguments_of(docker_build.dockerfile, "EXPOSE")
    assert arguments_of(docker_build.dockerfile, "ENTRYPOINT") == ['[ "/home/bentoml/bento/env/docker/entrypoint.sh" ]']
    # With no command, BentoML's entrypoint serves the bento, on BentoML's default port: 3000.
    assert 'set -- bentoml serve "$@" "$BENTO_PATH"' in (bento.path / "env/docker/entrypoint.sh").read_text()


def test_model_store_output_and_jobs_are_volume_paths_the_user_owns(
    bento: BuiltBento, docker_build: DockerBuild
) -> None:
    env = environment(docker_build.dockerfile)
    volumes = [env["BENTOML_HOME"], env["MUSICGEN_OUTPUT_DIR"], env["MUSICGEN_DATA_DIR"]]
    assert volumes == ["/data/bentoml", "/data/output", "/data/jobs"]
    assert f"chown bentoml:bentoml {' '.join(volumes)}" in setup_script(bento)


def test_hub_downloads_leave_no_cache_behind(docker_build: DockerBuild) -> None:
    env = environment(docker_build.dockerfile)
    assert not env["HF_HOME"].startswith("/data/")
    assert env["HF_XET_CHUNK_CACHE_SIZE_BYTES"] == "0"


def test_orchestrator_command_finds_the_package_in_the_bento(bento: BuiltBento, docker_build: DockerBuild) -> None:
    # `docker run IMAGE python -m musicgen_bento ...` runs in $BENTO_PATH: the package is in its src/.
    bento_path = re.search(r"^ARG BENTO_PATH=(\S+)$", docker_build.dockerfile, re.MULTILINE)
    assert bento_path is not None
    assert environment(docker_build.dockerfile)["PYTHONPATH"] == f"{bento_path.group(1)}/src"
    assert (bento.path / "src" / "musicgen_bento" / "__main__.py").is_file()


# ---- The bento's contents ----


def test_bento_holds_no_model_weights(bento: BuiltBento) -> None:
    info = yaml.safe_load((bento.path / "bento.yaml").read_text())
    assert info["models"] == []
    assert [path for path in bento_files(bento) if path.suffix in WEIGHT_SUFFIXES] == []
    assert list((bento.home / "models").iterdir()) == []


def test_containerize_copies_no_models_into_the_image(docker_build: DockerBuild) -> None:
    assert [name for name in docker_build.context if name.startswith(("./models/", "./hf-models/"))] == []


def test_bento_source_holds_only_what_runs(bento: BuiltBento) -> None:
    expected = {Path("service.py"), Path("requirements.txt"), Path("README.md"), Path("bentofile.yaml")}
    expected |= {path.relative_to(ROOT) for path in (ROOT / "musicgen_bento").rglob("*.py")}
    expected |= {path.relative_to(ROOT) for path in (ROOT / "musicgen_bento" / "api" / "playground").iterdir()}
    source = {path.relative_to("src") for path in bento_files(bento) if path.parts[0] == "src"}
    assert source == expected


# ---- The bento served ----


@pytest.fixture(scope="module")
def served_bento(
    bento: BuiltBento, tiny_models: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Path]]:
    """Ships the bento to another store (`bentoml export`, `bentoml import`) and serves it by tag.

    That store is the session's, which holds the tiny models; like the image, sources come from an input
    folder, and output and the job queue go to folders of their own.
    """
    workdir = tmp_path_factory.mktemp("served-bento")
    archive = workdir / "musicgen.bento"
    exported = subprocess.run(
        [str(BIN / "bentoml"), "export", bento.tag, str(archive)],
        env={**os.environ, "BENTOML_HOME": str(bento.home)},
        capture_output=True,
        text=True,
    )
    assert exported.returncode == 0, exported.stderr[-4000:]
    inputs = workdir / "input"
    inputs.mkdir()
    env = server_env(
        workdir / "output",
        MUSICGEN_MODEL=TINY_TEXT,
        MUSICGEN_DATA_DIR=str(workdir / "jobs"),
        MUSICGEN_INPUT_ROOTS=f"{inputs}{os.pathsep}{workdir / 'output'}",
    )
    imported = subprocess.run([str(BIN / "bentoml"), "import", str(archive)], env=env, capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr[-4000:]
    port = free_port()
    command = [str(BIN / "bentoml"), "serve", bento.tag, "--port", str(port), "--host", "127.0.0.1"]
    server = Server(command, env, port, workdir / "server.log")
    try:
        server.wait_until("ready", timeout=180)
        yield server, inputs
    finally:
        server.stop()


def test_served_bento_reports_its_model_and_licence(served_bento: tuple[Server, Path]) -> None:
    server, _ = served_bento
    response = httpx.get(f"{server.url}/health")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["model"], body["licence"]) == ("ready", TINY_TEXT, TINY_LICENCE)


def test_served_bento_continues_a_source(served_bento: tuple[Server, Path]) -> None:
    server, inputs = served_bento
    source = write_tone(inputs / "verse.wav", seconds=3.0, sample_rate=44100, channels=2)
    response = httpx.post(
        f"{server.url}/continue", json={"audio_path": str(source), "duration_s": 1.0, "seed": 7}, timeout=300
    )
    assert response.status_code == 200, response.text
    body = response.json()
    output = Path(body["audio_path"])
    assert output.parent == inputs.parent / "output"
    assert sf.info(str(output)).samplerate == body["sample_rate"] == 32000
    assert body["duration_s"] == pytest.approx(1.0, abs=0.02)
