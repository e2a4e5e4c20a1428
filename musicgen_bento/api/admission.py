"""How HTTP requests reach the generator: from an async route to a thread, in arrival order, with
as many at once as the generator decodes together, and canceled when the client goes away.

BentoML runs synchronous API methods through one capacity limiter sized by the service's
`threads` setting (default 1), which would serve `/continue` one call at a time whatever the
engine can batch. `/continue` is an async route instead, and this gate gives it threads of its
own: twice what the generator decodes together with the static engine (the slots decode while
as many more read their files, encode their prompts and wait in the engine's queue holding their
place), one with transformers' `generate()`, which serves one request at a time anyway. Further
requests wait as coroutines, not threads, first come first served.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from ..access.usage import Quota, Quotas
from ..errors import GenerationCanceled
from ..generation.host import ModelHost
from ..generation.params import CancelFn
from ..generation.protocol import Generator
from ..metrics import ServiceMetrics

logger = logging.getLogger("musicgen_bento")

T = TypeVar("T")

# How often a waiting route checks whether its client is still connected. The engine sees the
# cancel at its next step after that.
_DISCONNECT_POLL_S = 0.1

# Work a request does on its thread: given its arrival ticket and a cancel check.
GenerationCall = Callable[[Generator, int, CancelFn], T]


@dataclass(frozen=True)
class Admission:
    """A generation admitted for an API key (`key` None without keys), and what ends it."""

    key: str | None
    end: Callable[[bool], None]


class GenerationGate:
    """Admits requests to the ready generator: a ticket on arrival, then a thread when one is free."""

    def __init__(self, host: ModelHost, metrics: ServiceMetrics | None = None, quotas: Quotas | None = None) -> None:
        self.host = host
        self.metrics = metrics
        self.quotas = quotas
        self._limiter: anyio.CapacityLimiter | None = None

    def threads_for(self, generator: Generator) -> int:
        """Threads given to requests: what the generator decodes at once, plus as many preparing
        when it batches (see the module's docstring)."""
        return generator.concurrency * 2 if generator.concurrency > 1 else 1

    def admit(self, quota: Quota | None, audio_s: float) -> Admission:
        """Admits a generation for `quota`'s key: one of its running generations, and `audio_s`
        seconds of audio against its hour, until the admission ends. Raises `NotReady` while the
        model loads and `LimitReached` past the key's limits, before any work."""
        self.host.generator()
        if quota is None or self.quotas is None:
            return Admission(None, lambda succeeded: None)
        return Admission(quota.key, self.quotas.begin_generation(quota, audio_s))

    async def run(
        self,
        kind: str,
        call: GenerationCall[T],
        client_gone: Callable[[], Awaitable[bool]],
        admission: Admission | None = None,
    ) -> T:
        """Runs `call` on a thread once one is free; cancels it at its next step if `client_gone()`.
        Ends `admission` (`admit`'s) when it is over; a failed generation is not charged.

        Raises `NotReady` while the model loads and `GenerationCanceled` when the client left.
        """
        arrived = time.perf_counter()
        admission = admission or Admission(None, lambda succeeded: None)
        succeeded = False
        try:
            result = await self._run(kind, self.host.generator(), call, client_gone)
            succeeded = True
        finally:
            admission.end(succeeded)
        if self.metrics is not None:
            self.metrics.generation_finished(kind, time.perf_counter() - arrived, admission.key)
        return result

    async def _run(
        self, kind: str, generator: Generator, call: GenerationCall[T], client_gone: Callable[[], Awaitable[bool]]
    ) -> T:
        arrival = generator.next_arrival()  # its place is kept while it waits for a thread
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.threads_for(generator))
        gone, started = threading.Event(), threading.Event()

        def on_thread() -> T:
            started.set()
            return call(generator, arrival, gone.is_set)

        outcome: dict[str, Any] = {}
        async with anyio.create_task_group() as group:

            async def watch_client() -> None:
                while True:
                    await anyio.sleep(_DISCONNECT_POLL_S)
                    if await client_gone():
                        logger.info(
                            "%s: the client disconnected%s",
                            kind,
                            "; its generation stops" if started.is_set() else " while waiting; it leaves the line",
                        )
                        gone.set()  # a running generation stops at the engine's next step
                        # One still waiting for a thread leaves the line now; a running one cannot
                        # be interrupted here, and this cancel waits for its thread to return.
                        group.cancel_scope.cancel()
                        return

            group.start_soon(watch_client)
            try:
                outcome["result"] = await anyio.to_thread.run_sync(on_thread, limiter=self._limiter)
            except Exception as error:  # re-raised outside the group, not wrapped in an ExceptionGroup
                outcome["error"] = error
            group.cancel_scope.cancel()
        if "error" in outcome:
            raise outcome["error"]
        if "result" not in outcome:
            raise GenerationCanceled("the client disconnected before its request started")
        return outcome["result"]  # type: ignore[no-any-return]
