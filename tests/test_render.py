"""The render pipeline's pure parts: where the audio prompt lies in a source, and what a request
becomes as a plan (durations resolved against the server's limits)."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
import torch

from musicgen_bento.audio.clip import AudioClip
from musicgen_bento.errors import InvalidInput, InvalidParameter, OutputFull
from musicgen_bento.generation.mock import MockMusicGenGenerator
from musicgen_bento.render import RenderPlan, prompt_span, render
from musicgen_bento.schemas import ContinueRequest, GenerateRequest
from musicgen_bento.settings import Settings

from .conftest import write_tone

RATE = 32000
FRAME = 640  # one codec frame at 32 kHz and 50 Hz


def clip(seconds: float) -> AudioClip:
    return AudioClip(torch.zeros(1, round(seconds * RATE)), RATE)


@pytest.mark.parametrize(
    ("source_s", "start_s", "duration_s", "expected_s"),
    [
        (20.0, None, 10.0, (10.0, 20.0)),
        (3.0, None, 10.0, (0.0, 3.0)),
        (3.01, None, 10.0, (0.01, 3.01)),  # whole frames, counted back from the end
        (20.0, 4.0, 5.0, (4.0, 9.0)),
        (20.0, 17.0, 5.0, (17.0, 20.0)),  # as much as the source holds from the start
        (20.0, 0.0, 5.0, (0.0, 5.0)),
        (20.0, 4.0, 5.01, (4.0, 9.0)),  # rounded down to whole frames
    ],
    ids=["end", "short-source-whole", "end-whole-frames", "from-start", "start-near-end", "from-zero", "whole-frames"],
)
def test_the_prompt_lies_where_asked_in_whole_frames(
    source_s: float, start_s: float | None, duration_s: float, expected_s: tuple[float, float]
) -> None:
    start, end = prompt_span(clip(source_s), start_s, duration_s, FRAME, "audio_path")
    assert (start, end) == (round(expected_s[0] * RATE), round(expected_s[1] * RATE))
    assert (end - start) % FRAME == 0


@pytest.mark.parametrize("start_s", [20.0, 19.99, 25.0], ids=["at-the-end", "under-a-frame-left", "past-the-end"])
def test_a_start_that_leaves_no_frame_names_prompt_start_s(start_s: float) -> None:
    with pytest.raises(InvalidParameter, match=r"must start by 19\.980 s") as refused:
        prompt_span(clip(20.0), start_s, 5.0, FRAME, "audio_path")
    assert refused.value.field == "prompt_start_s"


def test_a_source_under_one_frame_names_the_source() -> None:
    with pytest.raises(InvalidInput) as refused:
        prompt_span(clip(0.01), None, 10.0, FRAME, "continue_from")
    assert refused.value.field == "continue_from"


def test_omitted_durations_resolve_against_the_limits() -> None:
    low = Settings(max_duration_s=4.0, max_job_duration_s=6.0, window_s=5.0, extend_stride_s=2.0)
    plan = RenderPlan.of(ContinueRequest(audio_path="/a.wav"), low)
    assert (plan.duration_s, plan.prompt_duration_s) == (4.0, 4.0)
    job = RenderPlan.of(GenerateRequest(prompt="x"), low)
    assert job.duration_s == 6.0
    roomy = RenderPlan.of(ContinueRequest(audio_path="/a.wav"), Settings())
    assert (roomy.duration_s, roomy.prompt_duration_s) == (10.0, 10.0)
    given = RenderPlan.of(ContinueRequest(audio_path="/a.wav", duration_s=2.5, prompt_duration_s=1.0), low)
    assert (given.duration_s, given.prompt_duration_s) == (2.5, 1.0)


def test_a_request_answers_with_all_its_takes_or_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(mock=True, output_dir=tmp_path / "out", warmup_s=0.0)
    generator = MockMusicGenGenerator()
    source = write_tone(tmp_path / "source.wav", seconds=1.0)
    plan = RenderPlan.of(ContinueRequest(audio_path=str(source), duration_s=0.5, takes=3), settings)
    real_write = sf.SoundFile.write
    writes: list[int] = []

    def third_write_fails(handle: sf.SoundFile, *args: object, **kwargs: object) -> None:
        writes.append(1)
        if len(writes) == 3:
            raise OSError(28, "No space left on device")
        real_write(handle, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "write", third_write_fails)
    with pytest.raises(OutputFull):
        render(plan, generator, settings)
    assert list(settings.output_dir.iterdir()) == []  # the two takes written before are gone too
    monkeypatch.setattr(sf.SoundFile, "write", real_write)
    rendered = render(plan, generator, settings)
    assert sorted(settings.output_dir.iterdir()) == sorted(take.path for take in rendered.takes)
