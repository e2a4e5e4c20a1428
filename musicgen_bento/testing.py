"""A real server for tests and benchmarks: started with the commands users run, on a free port,
and stopped with every process under it. Also the tone files both feed it.

BentoML starts its workers in process groups of their own, so stopping a server means ending its
whole process tree, not only its group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import soundfile as sf


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_tone(
    path: Path,
    seconds: float = 3.0,
    sample_rate: int = 44100,
    channels: int = 2,
    subtype: str | None = None,
) -> Path:
    """Writes a tone (a different pitch per channel, 220 Hz first) in the format the suffix names."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    data = np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)], axis=1)
    formats = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}
    sf.write(str(path), data.astype(np.float32), sample_rate, format=formats[path.suffix], subtype=subtype)
    return path


class ServerProcess:
    """A service process started with a real command line, its URL and its log."""

    def __init__(self, command: list[str], env: dict[str, str], port: int, log_path: Path, cwd: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.env = env
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def health(self) -> dict[str, object] | None:
        import httpx

        try:
            return httpx.get(f"{self.url}/health", timeout=5).json()  # type: ignore[no-any-return]
        except (httpx.HTTPError, ValueError):
            return None

    def wait_until(self, status: str, timeout: float = 120) -> dict[str, object]:
        """Polls GET /health until it reports `status`; fails with the log if the server exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            body = self.health()
            if body is not None and body.get("status") == status:
                return body
            time.sleep(0.2)
        raise AssertionError(f"server not {status} after {timeout} s; last health {self.health()}:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the server and every process under it: a crash, with no chance to clean up."""
        import psutil

        parent = psutil.Process(self.process.pid)
        for process in [*parent.children(recursive=True), parent]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM, as an operator stops it; then whatever is left of its tree is killed."""
        import psutil

        if self.process.poll() is None:
            children = psutil.Process(self.process.pid).children(recursive=True)
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
            _, alive = psutil.wait_procs(children, timeout=10)
            for child in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        self._log.close()
