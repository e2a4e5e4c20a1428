"""The BentoML service: MusicGen's HTTP API surface, and nothing else.

Routes validate (in their types), hand off to the `musicgen_bento` package and shape the
response. Configuration comes from environment variables (see the README's settings table).
"""

from __future__ import annotations

import logging
import sys
import time
from importlib.metadata import version
from typing import Any

import bentoml

from musicgen_bento.access.keys import KeysFile, key_in
from musicgen_bento.api.endpoints import CONTINUE, GENERATE, HEALTH, JOB_CANCEL, JOB_STATUS, bentoml_api, check_served
from musicgen_bento.api.errors import answers_errors
from musicgen_bento.api.guard import Guard, bound_address
from musicgen_bento.api.middleware import ReadableErrorsMiddleware, quiet_refusals
from musicgen_bento.api.routes import HttpRoutes
from musicgen_bento.schemas import (
    ContinueRequest,
    ContinueResponse,
    GenerateRequest,
    HealthResponse,
    JobAccepted,
    JobView,
)
from musicgen_bento.settings import Settings, exposure_risks

with bentoml.importing():
    from musicgen_bento.access.usage import Quotas, open_ledger
    from musicgen_bento.api.admission import GenerationGate
    from musicgen_bento.api.openapi import openapi_document
    from musicgen_bento.api.webhooks import WebhookDispatcher
    from musicgen_bento.audio.uploads import UploadStore
    from musicgen_bento.generation.host import ModelHost
    from musicgen_bento.jobs import open_queue
    from musicgen_bento.jobs.service import JobService
    from musicgen_bento.jobs.worker import JobWorker
    from musicgen_bento.metrics import ServiceMetrics, use_own_metrics_directory
    from musicgen_bento.parent_watch import exit_with_parent
    from musicgen_bento.render import RenderPlan, check_plan, input_limits, render, result_of

logger = logging.getLogger("musicgen_bento")
# BentoML's logging shows WARNING and above from other libraries; the service's own INFO lines (the
# model ready, a job finished, a client gone) are what an operator reads, so they are let through.
logger.setLevel(logging.INFO)
quiet_refusals()
SETTINGS = Settings.from_env()
# Set, every route but the public ones needs one of the file's keys (`musicgen_bento.api.guard`).
KEYS = None if SETTINGS.api_keys_file is None else KeysFile(SETTINGS.api_keys_file)
use_own_metrics_directory()

# BentoML's API methods answer POST only, with JSON: the other routes (GET and DELETE, streams,
# uploads, the playground) are a Starlette app mounted beside them. Every route is declared in
# `musicgen_bento.api.endpoints`.
http_routes = HttpRoutes()


@bentoml.service(
    name="musicgen",
    workers=1,
    # For the quick synchronous routes (job submission checks its files, status, cancel). /continue is
    # async and takes threads from its own gate, sized to what the engine decodes together.
    threads=4,
    # A long continuation on a CPU takes minutes; the orchestrator, not the server, decides when to give up.
    traffic={"timeout": 3600},
)
@bentoml.asgi_app(http_routes.app, path="/")
class MusicGen:
    """MusicGen continuation, asynchronous generation jobs and health over HTTP."""

    def __init__(self) -> None:
        self.settings = SETTINGS
        for risk in exposure_risks(self.settings, bound_address(sys.argv)):
            logger.warning(risk)
        self.metrics = ServiceMetrics(self.settings.batch_slots)
        self.host = ModelHost(self.settings, on_step=self.metrics.engine_step)
        self.host.start()
        self.keys = KEYS
        self.quotas = Quotas(open_ledger(self.settings), self.settings)
        self.gate = GenerationGate(self.host, self.metrics, self.quotas)
        queue = open_queue(self.settings)
        self.jobs = JobService(queue, self.host, self.settings, self.quotas)
        self.worker = JobWorker(queue, self.host, self.settings, self.metrics, self.quotas)
        self.worker.start()
        self.webhooks = WebhookDispatcher(queue, self.settings, self.jobs.webhook_body)
        self.webhooks.start()
        self.uploads = UploadStore(self.settings.upload_dir, input_limits(self.settings), self.settings.upload_ttl_s)
        self.uploads.start_sweeping()
        self._openapi: dict[str, Any] | None = None
        http_routes.bind(self)
        self._grace_s = self.settings.shutdown_grace_s
        exit_with_parent(on_orphaned=self._orphaned)

    def _orphaned(self) -> None:
        # The server that supervised this worker is gone and its replacement may start at any
        # moment: running jobs go back to the queue at once instead of getting their grace period.
        self._grace_s = 0.0

    def __is_ready__(self) -> bool:
        return self.host.health().status == "ready"

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        # In this order: the running job stops (or finishes) first, then the decoding engine
        # between two steps, so the process never exits in the middle of a torch operation.
        self.worker.stop(grace_s=self._grace_s)
        self.webhooks.stop()
        self.host.close()
        self.jobs.queue.close()
        self.uploads.stop_sweeping()

    @bentoml_api(CONTINUE)
    @answers_errors
    async def continue_(self, ctx: bentoml.Context, **fields: Any) -> ContinueResponse:
        """Continue the music in a file on the server's disk; returns the path of a new file.

        Concurrent calls decode together (see `musicgen_bento.api.admission`); a call whose client
        disconnects is canceled at the engine's next step and writes nothing.
        """
        started = time.perf_counter()
        plan = RenderPlan.of(ContinueRequest.model_construct(**fields), self.settings)
        check_plan(plan, self.settings)  # a refusal costs no part of the key's limits
        admission = self.gate.admit(self.quotas.of(key_in(ctx.request.scope)), plan.audio_s)
        rendered = await self.gate.run(
            "continue",
            lambda generator, arrival, client_gone: render(
                plan, generator, self.settings, should_cancel=client_gone, arrival=arrival
            ),
            ctx.request.is_disconnected,
            admission,
        )
        elapsed_s = round(time.perf_counter() - started, 3)
        return ContinueResponse.model_validate({**dict(result_of(rendered)), "elapsed_s": elapsed_s})

    @bentoml_api(GENERATE)
    @answers_errors
    def generate(self, ctx: bentoml.Context, **fields: Any) -> JobAccepted:
        """Queue a generation job; answers 202 at once with the job's id and where to poll it."""
        accepted = self.jobs.submit(
            GenerateRequest.model_construct(**fields), self.quotas.of(key_in(ctx.request.scope))
        )
        ctx.response.status_code = 202
        ctx.response.headers["Location"] = accepted.status_url
        return accepted

    @bentoml_api(JOB_STATUS)
    @answers_errors
    def job_status(self, job_id: str) -> JobView:
        """The same answer as GET /jobs/{job_id}, for `bentoml.SyncHTTPClient`."""
        return self.jobs.view(job_id)

    @bentoml_api(JOB_CANCEL)
    @answers_errors
    def cancel_job(self, job_id: str) -> JobView:
        """The same as DELETE /jobs/{job_id}, for `bentoml.SyncHTTPClient`."""
        return self.jobs.cancel(job_id)

    @bentoml_api(HEALTH)
    def health(self) -> HealthResponse:
        """The same answer as GET /health, for `bentoml.SyncHTTPClient(...).health()`."""
        return self.health_report()

    def health_report(self) -> HealthResponse:
        snapshot = self.host.health()
        return HealthResponse(
            status=snapshot.status,
            keys_required=self.keys is not None,
            model=snapshot.model,
            gpu_id=self.settings.gpu_id,
            device=snapshot.device,
            detail=snapshot.detail,
            licence=snapshot.licence,
            precision=snapshot.precision,
            memory=self.host.memory_health(),
            engine=self.host.engine_health(),
            melody=None if (ready := self.host.ready_generator()) is None else ready.is_melody,
        )

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document of every route, made once."""
        if self._openapi is None:
            bentoml_document = MusicGen.openapi_spec.asdict()  # type: ignore[attr-defined]
            self._openapi = openapi_document(bentoml_document, "musicgen", version("musicgen-bento"), self.settings)
        return self._openapi


# `@bentoml.service` makes MusicGen a bentoml.Service; the stacked decorators hide that from mypy.
# The first added runs first: Host, Origin and key are checked before anything else.
MusicGen.add_asgi_middleware(Guard, settings=SETTINGS, keys=KEYS)  # type: ignore[attr-defined]
MusicGen.add_asgi_middleware(ReadableErrorsMiddleware)  # type: ignore[attr-defined]
check_served({api.route for api in MusicGen.apis.values()})  # type: ignore[attr-defined]
