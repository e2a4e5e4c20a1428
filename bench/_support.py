"""Helpers shared by the benchmarks: a private model store, timing, and a served instance."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def use_private_store() -> Path:
    """Points BentoML at a fresh store (call before importing bentoml) unless BENTOML_HOME is set."""
    if "BENTOML_HOME" not in os.environ:
        os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="musicgen-bench-home-")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return Path(os.environ["BENTOML_HOME"])


def median_seconds(run: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    """Median wall time of `repeats` runs, and all of them."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


def write_tone(path: Path, seconds: float, sample_rate: int) -> Path:
    """A mono 220 Hz tone as a wav file: the source the benchmarks continue."""
    import numpy as np
    import soundfile as sf

    t = np.arange(int(seconds * sample_rate)) / sample_rate
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sample_rate)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(settings: dict[str, str], timeout_s: float = 300) -> Iterator[str]:
    """Runs `bentoml serve service:MusicGen` with `settings` until the block ends; yields its URL."""
    import httpx

    port = free_port()
    env = {**os.environ, **settings}
    url = f"http://127.0.0.1:{port}"
    with tempfile.NamedTemporaryFile(prefix="musicgen-bench-server-", suffix=".log", delete=False) as log:
        process = subprocess.Popen(
            [str(BIN / "bentoml"), "serve", "service:MusicGen", "--port", str(port), "--host", "127.0.0.1"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not become ready; see {log.name}")
                try:
                    if httpx.get(f"{url}/health", timeout=5).json().get("status") == "ready":
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                time.sleep(0.2)
            yield url
        finally:
            stop_tree(process)


def stop_tree(process: subprocess.Popen[bytes]) -> None:
    """Stops a server and every process under it. BentoML's workers run in process groups of their
    own, so a signal to the server's group alone would leave them running."""
    import psutil

    children = psutil.Process(process.pid).children(recursive=True)
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        child.kill()
