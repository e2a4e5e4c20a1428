"""The jobs API's logic (`JobService`) on both queue backends, with the mock generator's host and
the real worker: what it refuses before queueing, idempotency keys, the artifact cache, and the
views and audio of a job. The same checks as /continue's, from the one render pipeline."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import soundfile as sf

from musicgen_bento.errors import Conflict, InvalidInput, InvalidParameter, JobNotFound, MusicGenError
from musicgen_bento.generation.host import ModelHost
from musicgen_bento.jobs.model import JobQueue
from musicgen_bento.jobs.service import JobService
from musicgen_bento.jobs.worker import JobWorker
from musicgen_bento.schemas import GenerateRequest, JobResult
from musicgen_bento.settings import Settings

from .conftest import write_tone


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        mock=True, output_dir=tmp_path / "output", data_dir=tmp_path / "data", max_job_duration_s=10.0, warmup_s=0.0
    )


@pytest.fixture
def host(settings: Settings) -> ModelHost:
    host = ModelHost(settings)
    host.start()  # mock mode: ready at once
    return host


@pytest.fixture
def jobs(queue: JobQueue, host: ModelHost, settings: Settings) -> JobService:
    return JobService(queue, host, settings)


@pytest.fixture
def run_jobs(queue: JobQueue, host: ModelHost, settings: Settings) -> Iterator[Callable[[], None]]:
    """Starts the worker (once asked): queued jobs run on the mock generator."""
    workers: list[JobWorker] = []

    def start() -> None:
        worker = JobWorker(queue, host, settings)
        worker.start()
        workers.append(worker)

    yield start
    for worker in workers:
        worker.stop(grace_s=5)


def wait_until_finished(jobs: JobService, job_id: str) -> str:
    deadline = time.monotonic() + 30
    while (status := jobs.view(job_id).status) in ("queued", "running"):
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.05)
    return status


@pytest.mark.parametrize(
    ("fields", "error", "field"),
    [
        ({"prompt": " "}, InvalidParameter, "prompt"),
        ({"prompt": "x", "duration_s": 11.0}, InvalidParameter, "duration_s"),
        ({"prompt": "x", "continue_from": "/no/such/file.wav"}, MusicGenError, "continue_from"),
        ({"prompt": "x", "continue_from": "{tiny}"}, InvalidInput, "continue_from"),
        ({"prompt": "x", "continue_from": "{tone}", "prompt_duration_s": 29.5}, InvalidParameter, "prompt_duration_s"),
        ({"prompt": "x", "melody_path": "{tone}"}, InvalidParameter, "melody_path"),
    ],
    ids=[
        "no-prompt",
        "over-the-job-limit",
        "missing-source",
        "source-under-one-frame",
        "prompt-too-long",
        "no-melody-model",
    ],
)
def test_refuses_what_cannot_run_before_queueing(
    jobs: JobService, tmp_path: Path, fields: dict[str, object], error: type[Exception], field: str
) -> None:
    files = {
        "{tone}": str(write_tone(tmp_path / "tone.wav", seconds=1.0)),
        "{tiny}": str(write_tone(tmp_path / "tiny.wav", seconds=0.005)),  # shorter than one codec frame
    }
    body = {name: files.get(value, value) if isinstance(value, str) else value for name, value in fields.items()}
    with pytest.raises(error) as refused:
        jobs.submit(GenerateRequest(**body))  # type: ignore[arg-type]
    assert refused.value.field == field  # type: ignore[attr-defined]
    assert jobs.queue.queued_count() == 0


def test_a_queued_job_runs_and_its_audio_is_served(jobs: JobService, run_jobs: Callable[[], None]) -> None:
    accepted = jobs.submit(GenerateRequest(prompt="drums", duration_s=0.5, seed=3, output_format="flac"))
    assert (accepted.status, accepted.queue_position, accepted.status_url) == (
        "queued",
        0,
        f"/jobs/{accepted.job_id}",
    )
    run_jobs()
    assert wait_until_finished(jobs, accepted.job_id) == "succeeded"
    view = jobs.view(accepted.job_id)
    assert view.result is not None and (view.result.seed, view.result.cached) == (3, False)
    assert view.result.audio_url == f"/jobs/{accepted.job_id}/audio"
    data, media_type = jobs.audio(accepted.job_id)
    assert media_type == "audio/flac" and data[:4] == b"fLaC"


def test_the_same_seeded_request_is_answered_from_the_cache(jobs: JobService, run_jobs: Callable[[], None]) -> None:
    request = GenerateRequest(prompt="organ", duration_s=0.5, seed=11)
    first = jobs.submit(request)
    run_jobs()
    assert wait_until_finished(jobs, first.job_id) == "succeeded"
    again = jobs.submit(request)
    assert again.job_id != first.job_id and again.status == "succeeded"
    view = jobs.view(again.job_id)
    assert view.result is not None and view.result.cached is True
    assert jobs.audio(again.job_id)[0] == jobs.audio(first.job_id)[0]


def test_an_idempotency_key_returns_the_first_job_or_refuses_a_different_request(jobs: JobService) -> None:
    first = jobs.submit(GenerateRequest(prompt="harp", idempotency_key="key-1"))
    assert jobs.submit(GenerateRequest(prompt="harp", idempotency_key="key-1")).job_id == first.job_id
    with pytest.raises(Conflict):
        jobs.submit(GenerateRequest(prompt="a different prompt", idempotency_key="key-1"))


def test_the_audio_of_an_unfinished_job_is_a_conflict(jobs: JobService) -> None:
    accepted = jobs.submit(GenerateRequest(prompt="bells"))
    with pytest.raises(Conflict):
        jobs.audio(accepted.job_id)


@pytest.mark.parametrize("job_id", ["0" * 32, "not-an-id", "../../etc/passwd"], ids=["unknown", "malformed", "path"])
def test_an_unknown_job_is_not_found(jobs: JobService, job_id: str) -> None:
    with pytest.raises(JobNotFound):
        jobs.view(job_id)
    with pytest.raises(JobNotFound):
        jobs.cancel(job_id)


def test_canceling_a_queued_job_ends_it_at_once(jobs: JobService) -> None:
    accepted = jobs.submit(GenerateRequest(prompt="strings"))
    assert jobs.cancel(accepted.job_id).status == "canceled"
    assert jobs.queue.queued_count() == 0


def run_one_job(queue: JobQueue, settings: Settings, request: GenerateRequest) -> JobResult:
    """Submits `request` to a job service with `settings` (mock generator), runs it, returns its result."""
    host = ModelHost(settings)
    host.start()
    jobs = JobService(queue, host, settings)
    accepted = jobs.submit(request)
    worker = JobWorker(queue, host, settings)
    worker.start()
    try:
        assert wait_until_finished(jobs, accepted.job_id) == "succeeded"
    finally:
        worker.stop(grace_s=5)
    result = jobs.view(accepted.job_id).result
    assert result is not None
    return result


def test_an_omitted_duration_means_the_job_limit_where_it_is_lower(queue: JobQueue, tmp_path: Path) -> None:
    settings = Settings(mock=True, output_dir=tmp_path / "low", max_job_duration_s=1.5, warmup_s=0.0)
    result = run_one_job(queue, settings, GenerateRequest(prompt="short"))
    assert result.duration_s == pytest.approx(1.5)


def test_the_prompt_stays_out_of_files_when_the_settings_say_so(queue: JobQueue, tmp_path: Path) -> None:
    settings = Settings(mock=True, output_dir=tmp_path / "private", metadata_prompt=False, warmup_s=0.0)
    result = run_one_job(queue, settings, GenerateRequest(prompt="my secret song title", duration_s=0.5, seed=2))
    assert result.provenance is not None
    assert (result.provenance.prompt, result.provenance.seed) == (None, 2)
    with sf.SoundFile(result.audio_path) as written:
        metadata = written.copy_metadata()
    assert "secret" not in json.dumps(metadata)
    assert metadata["title"] == "MusicGen"


def test_takes_are_kept_and_served_one_by_one(jobs: JobService, run_jobs: Callable[[], None], tmp_path: Path) -> None:
    source = write_tone(tmp_path / "source.wav", seconds=1.0)
    accepted = jobs.submit(GenerateRequest(continue_from=str(source), duration_s=0.5, seed=40, takes=3))
    run_jobs()
    assert wait_until_finished(jobs, accepted.job_id) == "succeeded"
    result = jobs.view(accepted.job_id).result
    assert result is not None
    assert [take.seed for take in result.takes] == [40, 41, 42]
    assert [take.audio_url for take in result.takes] == [
        f"/jobs/{accepted.job_id}/audio",
        f"/jobs/{accepted.job_id}/audio?take=1",
        f"/jobs/{accepted.job_id}/audio?take=2",
    ]
    assert result.takes[0].audio_path == result.audio_path
    assert len({take.audio_path for take in result.takes}) == 3
    for index, take in enumerate(result.takes):
        assert jobs.audio(accepted.job_id, index)[0] == Path(take.audio_path).read_bytes()
    with pytest.raises(JobNotFound) as missing:
        jobs.audio(accepted.job_id, 3)
    assert missing.value.field == "take"
