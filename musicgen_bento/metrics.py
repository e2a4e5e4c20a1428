"""Prometheus metrics of the decoding engine, the requests and the jobs, served on BentoML's `/metrics`.

BentoML runs its workers in Prometheus' multiprocess mode and sets `PROMETHEUS_MULTIPROC_DIR`
while a worker starts, after the service module was imported; `prometheus_client` must be first
imported after that (BentoML's own `bentoml.metrics` is now a deprecated proxy that defers the
import for this reason), so `ServiceMetrics` is made in the service's constructor. Gauges add up
the live processes (`livesum`): one worker per GPU, so the sum is that worker's value.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from .engine import StepReport

# Every batch size up to this has a bucket of its own, so the histogram counts steps per size exactly.
_MAX_BATCH_BUCKETS = 64
_GENERATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200)


def use_own_metrics_directory() -> None:
    """Gives this server a Prometheus multiprocess directory of its own; call when the service is
    imported.

    BentoML keeps every server's multiprocess files in `$BENTOML_HOME/prometheus_multiproc_dir`
    and empties it whenever a server starts, so a second service on a node (one per GPU, sharing
    one model store) would wipe the first one's metrics, which then report nothing. The server
    process (which imports the service before it creates that directory) points BentoML at
    `$BENTOML_HOME/musicgen-metrics/server-<pid>` instead; directories of servers no longer running
    are removed. Workers inherit the choice through `PROMETHEUS_MULTIPROC_DIR`.
    """
    import psutil
    from bentoml._internal.configuration.containers import BentoMLContainer

    # BentoML's variable, not a setting of ours: once set, the server has already chosen.
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        return
    base = Path(BentoMLContainer.bentoml_home.get()) / "musicgen-metrics"
    base.mkdir(parents=True, exist_ok=True)
    for stale in base.glob("server-*"):
        pid = stale.name.removeprefix("server-")
        if not pid.isdigit() or not psutil.pid_exists(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    BentoMLContainer.prometheus_multiproc_dir.set(str(base / f"server-{os.getpid()}"))


class ServiceMetrics:
    """The service's own metrics. Every method is safe to call from any thread and never raises."""

    def __init__(self, batch_slots: int) -> None:
        import prometheus_client as prometheus

        sizes = tuple(float(size) for size in range(1, min(batch_slots, _MAX_BATCH_BUCKETS) + 1))

        def gauge(name: str, text: str) -> Any:
            return prometheus.Gauge(name, text, multiprocess_mode="livesum")

        self._decoding = gauge("musicgen_engine_requests_decoding", "Requests holding a decoding slot now.")
        self._waiting = gauge(
            "musicgen_engine_requests_waiting", "Requests queued in the engine for a free decoding slot now."
        )
        self._steps_per_second = gauge(
            "musicgen_engine_steps_per_second",
            "Decoding steps per second over the last second of decoding (0 when idle).",
        )
        self._jobs_queued = gauge(
            "musicgen_jobs_queued", "Jobs waiting in the queue (all replicas' queue when it is shared through Redis)."
        )
        self._jobs_running = gauge("musicgen_jobs_running", "Jobs this replica is running now.")
        self._batch = prometheus.Histogram(
            "musicgen_engine_batch_size",
            "Requests decoded together, one observation per decoding step (batch occupancy).",
            buckets=sizes,
        )
        self._steps = prometheus.Counter("musicgen_engine_steps", "Batched decoding steps run.")
        self._canceled = prometheus.Counter(
            "musicgen_engine_requests_canceled",
            "Requests that left the engine before their end: a job canceled, a client gone.",
        )
        self._nonfinite = prometheus.Counter(
            "musicgen_engine_requests_nonfinite",
            "Requests failed because the model's output turned to NaN or infinity (MUSICGEN_DTYPE overflows).",
        )
        self._generation = prometheus.Histogram(
            "musicgen_generation_seconds",
            "Seconds from a request's arrival to its written file, for requests that succeeded; by kind and by the "
            "API key's name (empty without keys).",
            labelnames=("kind", "key"),
            buckets=_GENERATION_BUCKETS,
        )
        self._lock = threading.Lock()
        self._canceled_seen = 0
        self._nonfinite_seen = 0
        self._window_start = time.monotonic()
        self._window_steps = 0

    def engine_step(self, report: StepReport) -> None:
        """The engine's observer: called on its thread after each step and when it goes idle."""
        self._decoding.set(report.decoding)
        self._waiting.set(report.waiting)
        with self._lock:
            if report.canceled > self._canceled_seen:
                self._canceled.inc(report.canceled - self._canceled_seen)
                self._canceled_seen = report.canceled
            if report.nonfinite > self._nonfinite_seen:
                self._nonfinite.inc(report.nonfinite - self._nonfinite_seen)
                self._nonfinite_seen = report.nonfinite
            now = time.monotonic()
            if report.batch == 0:
                self._steps_per_second.set(0)
                self._window_start, self._window_steps = now, 0
                return
            self._window_steps += 1
            if now - self._window_start >= 1.0:
                self._steps_per_second.set(self._window_steps / (now - self._window_start))
                self._window_start, self._window_steps = now, 0
        self._steps.inc()
        self._batch.observe(report.batch)

    def generation_finished(self, kind: str, seconds: float, key: str | None = None) -> None:
        """A request of `kind` (`continue`, `continue_stream`, `job`) produced its file in `seconds`,
        for the API key named `key`."""
        self._generation.labels(kind=kind, key=key or "").observe(seconds)

    def jobs(self, queued: int | None = None, running: int | None = None) -> None:
        if queued is not None:
            self._jobs_queued.set(queued)
        if running is not None:
            self._jobs_running.set(running)
