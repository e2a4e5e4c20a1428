"""Ends a BentoML worker when the server process that started it dies, so no worker outlives its server.

`bentoml serve` starts its workers in sessions of their own, so a SIGKILL of the server (the
process a node orchestrator started, `python -m musicgen_bento` execs into it), or of its process
group, leaves the worker running: still listening on the port, holding the model and the GPU's
memory, running jobs against the same queue as the server that replaces it. A signal cannot reach
it through the group, and Linux's parent-death signal fires when the *thread* that forked the
worker ends, not its process, which an arbiter does not promise. So the worker watches its parent
id: once it changes (the worker was re-parented because its server died), the worker stops at
once, handing running jobs back to the queue without a grace period, and exits hard if stopping
takes longer than a few seconds.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("musicgen_bento")

# How often the parent is checked: the worker is gone within about this plus its stopping time.
_POLL_S = 0.25


def exit_with_parent(on_orphaned: Callable[[], None], hard_exit_after_s: float = 8.0) -> None:
    """Watches this process's parent on a daemon thread. When it dies: calls `on_orphaned`, sends
    this process SIGTERM (the server's own orderly stop), and after `hard_exit_after_s` exits."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_POLL_S)
        logger.warning("the server process (pid %d) is gone; this worker (pid %d) stops too", parent, os.getpid())
        try:
            on_orphaned()
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(hard_exit_after_s)
        logger.error("still running %.0f s after its server died; exiting now", hard_exit_after_s)
        # No interpreter finalisation: a thread still inside a torch operation would abort it.
        os._exit(1)

    threading.Thread(target=watch, name="musicgen-parent-watch", daemon=True).start()
