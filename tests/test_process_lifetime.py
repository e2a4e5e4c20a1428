"""The service's processes live and die with the process the orchestrator started: after SIGKILL of
`python -m musicgen_bento` (or of its process group), SIGTERM or SIGINT, no BentoML worker is left
running, and the port is free for the next start within a few seconds."""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any

import psutil
import pytest

from .conftest import TINY_TEXT, Server

STOPPED_WITHIN_S = 15


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_until_gone(processes: list[psutil.Process], port: int) -> None:
    deadline = time.monotonic() + STOPPED_WITHIN_S
    while time.monotonic() < deadline:
        alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive and port_is_free(port):
            return
        time.sleep(0.2)
    alive = [f"{p.pid} {p.cmdline()[:4]}" for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    raise AssertionError(f"after {STOPPED_WITHIN_S} s still running: {alive}; port {port} free: {port_is_free(port)}")


@pytest.mark.parametrize(
    ("how", "clean_exit"),
    [
        (lambda s: os.kill(s.process.pid, signal.SIGKILL), False),
        (lambda s: os.killpg(s.process.pid, signal.SIGKILL), False),
        (lambda s: os.kill(s.process.pid, signal.SIGTERM), True),
        (lambda s: os.kill(s.process.pid, signal.SIGINT), True),
    ],
    ids=["sigkill-process", "sigkill-group", "sigterm", "sigint"],
)
def test_no_process_outlives_the_command(
    start_server: Any, tiny_models: dict[str, str], how: Any, clean_exit: bool
) -> None:
    server: Server = start_server(cli_args=["--model", TINY_TEXT])
    server.wait_until("ready", timeout=180)
    tree = [psutil.Process(server.process.pid), *psutil.Process(server.process.pid).children(recursive=True)]
    assert len(tree) >= 2, "expected the server and at least one worker"
    how(server)
    wait_until_gone(tree, server.port)
    returncode = server.process.wait(timeout=5)
    if clean_exit:
        assert returncode == 0, server.log()
    else:  # nothing stopped the worker but its own watch on its parent
        assert "is gone; this worker" in server.log_path.read_text(errors="replace"), server.log()
