"""Helpers shared by the benchmarks: a private model store, timing, and a served instance."""

from __future__ import annotations

import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from musicgen_bento.testing import ServerProcess

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
    from musicgen_bento.testing import write_tone as tone

    return tone(path, seconds=seconds, sample_rate=sample_rate, channels=1)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def starting(settings: dict[str, str]) -> Iterator[ServerProcess]:
    """Starts `bentoml serve service:MusicGen` with `settings` and yields it at once, loading (wait
    with `wait_until("ready")`); stopped with its whole tree when the block ends. The server is the
    one the tests use (`musicgen_bento.testing`)."""
    from musicgen_bento.testing import ServerProcess, free_port

    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="musicgen-bench-server-")) / "server.log"
    # `python -m bentoml`: also where bentoml's scripts are not beside the interpreter (a GPU
    # machine's packages installed with --target, see gpu_wheels.py).
    command = [sys.executable, "-m", "bentoml", "serve", "service:MusicGen", "--port", str(port), "--host", "127.0.0.1"]
    server = ServerProcess(command, {**os.environ, **settings}, port, log_path, cwd=ROOT)
    # A bench stopped with SIGTERM (kill, a timeout) would otherwise exit without the `finally`
    # below and leave its server running, holding the cores the next measurement needs.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def served(settings: dict[str, str], timeout_s: float = 300) -> Iterator[str]:
    """Runs `bentoml serve service:MusicGen` with `settings` until the block ends; yields its URL
    once it is ready."""
    with starting(settings) as server:
        server.wait_until("ready", timeout=timeout_s)
        yield server.url
