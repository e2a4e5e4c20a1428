"""The generator on the tiny random models: exact lengths, seeds, joins, windows, melody, progress
and cancel. Random weights make the content noise; the structure is what is checked."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

from musicgen_bento.audio.clip import AudioClip
from musicgen_bento.errors import GenerationCanceled
from musicgen_bento.generation.backends import WindowCall, WindowInputs, backend_named
from musicgen_bento.generation.generator import MusicGenGenerator, SharedEncodings
from musicgen_bento.generation.params import GenerationHooks, GenerationParams, GenerationRequest
from musicgen_bento.generation.windows import Window, plan_windows
from musicgen_bento.models.store import find

SAMPLE_RATE = 32000


def _generator(name: str, window_s: float = 30.0, stride_s: float = 18.0) -> MusicGenGenerator:
    info = find(name)
    assert info is not None
    return MusicGenGenerator(info, "cpu", torch.float32, window_s, stride_s)


@pytest.fixture(scope="module")
def text_generator(tiny_models: dict[str, str]) -> MusicGenGenerator:
    return _generator(tiny_models["text"])


@pytest.fixture(scope="module")
def melody_generator(tiny_models: dict[str, str]) -> MusicGenGenerator:
    return _generator(tiny_models["melody"])


def _tone(seconds: float, channels: int = 1, hz: float = 220.0) -> AudioClip:
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    samples = 0.3 * torch.sin(2 * torch.pi * hz * t).repeat(channels, 1)
    return AudioClip(samples, SAMPLE_RATE)


@pytest.mark.parametrize(
    ("prompt", "new", "expected"),
    [
        (500, 250, [Window(500, 250)]),
        (500, 1000, [Window(500, 1000)]),
        (500, 1500, [Window(500, 1000), Window(600, 500)]),
        (0, 3000, [Window(0, 1500), Window(600, 900), Window(600, 600)]),
    ],
    ids=["fits", "fills-window", "two-windows", "text-only-three-windows"],
)
def test_plan_windows_keeps_each_window_within_the_limit(prompt: int, new: int, expected: list[Window]) -> None:
    windows = plan_windows(prompt, new, window_frames=1500, stride_frames=900)
    assert windows == expected
    assert sum(w.new_frames for w in windows) == new
    assert all(w.prompt_frames + w.new_frames <= 1500 for w in windows)


def test_plan_windows_refuses_a_prompt_that_fills_the_window() -> None:
    with pytest.raises(ValueError, match="shorter than the window"):
        plan_windows(1500, 10, window_frames=1500, stride_frames=900)


@pytest.mark.parametrize("duration_s", [0.5, 1.0, 2.37], ids=["half-second", "one-second", "odd-length"])
def test_output_is_exactly_the_requested_length(text_generator: MusicGenGenerator, duration_s: float) -> None:
    request = GenerationRequest(
        GenerationParams(prompt="drums", duration_s=duration_s, seed=1), audio_prompt=_tone(1.0)
    )
    result = text_generator.generate(request)
    assert result.audio.shape == (1, round(duration_s * SAMPLE_RATE))
    assert result.sample_rate == SAMPLE_RATE
    assert torch.isfinite(result.audio).all()


def test_same_seed_same_audio_and_different_seed_different_audio(text_generator: MusicGenGenerator) -> None:
    def run(seed: int) -> torch.Tensor:
        params = GenerationParams(prompt="jazz", duration_s=1.0, seed=seed)
        return text_generator.generate(GenerationRequest(params, audio_prompt=_tone(1.0))).audio

    first, again, other = run(7), run(7), run(8)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_a_random_seed_is_chosen_and_reported(text_generator: MusicGenGenerator) -> None:
    result = text_generator.generate(GenerationRequest(GenerationParams(duration_s=0.5)))
    replay = text_generator.generate(GenerationRequest(GenerationParams(duration_s=0.5, seed=result.seed)))
    assert torch.equal(result.audio, replay.audio)


def test_continuation_joins_the_prompt_without_a_jump(text_generator: MusicGenGenerator) -> None:
    prompt = _tone(2.0)
    result = text_generator.generate(GenerationRequest(GenerationParams(duration_s=1.0, seed=3), audio_prompt=prompt))
    join_step = (result.audio[:, 0] - prompt.samples[:, -1]).abs().max().item()
    largest_step_inside = result.audio.diff(dim=1).abs().max().item()
    assert join_step <= largest_step_inside


def test_greedy_decoding_is_deterministic_without_a_seed(text_generator: MusicGenGenerator) -> None:
    params = GenerationParams(duration_s=0.5, temperature=0.0)
    first = text_generator.generate(GenerationRequest(params, audio_prompt=_tone(1.0)))
    second = text_generator.generate(GenerationRequest(params, audio_prompt=_tone(1.0)))
    assert torch.equal(first.audio, second.audio)


def test_windows_stitch_to_the_exact_length(tiny_models: dict[str, str]) -> None:
    # A 2 s window with a 1 s stride forces five windows for 4.5 s after a 1 s prompt.
    generator = _generator(tiny_models["text"], window_s=2.0, stride_s=1.0)
    steps: list[tuple[int, int]] = []
    params = GenerationParams(duration_s=4.5, seed=2)
    result = generator.generate(
        GenerationRequest(params, audio_prompt=_tone(1.0)), GenerationHooks(progress=lambda d, t: steps.append((d, t)))
    )
    assert result.audio.shape == (1, 4.5 * SAMPLE_RATE)
    total = steps[-1][1]
    assert steps[-1][0] == total
    assert total == 225 + 5 * 3  # 225 frames plus the delay pattern's 3 extra steps per window


def test_progress_counts_every_step_and_ends_complete(text_generator: MusicGenGenerator) -> None:
    steps: list[tuple[int, int]] = []
    text_generator.generate(
        GenerationRequest(GenerationParams(duration_s=1.0, seed=0)),
        GenerationHooks(progress=lambda d, t: steps.append((d, t))),
    )
    assert steps[0][0] == 1
    assert steps[-1][0] == steps[-1][1] == 50 + 3
    assert [d for d, _ in steps] == sorted(d for d, _ in steps)


def test_cancel_stops_generation_at_the_next_step(text_generator: MusicGenGenerator) -> None:
    steps: list[int] = []
    with pytest.raises(GenerationCanceled):
        text_generator.generate(
            GenerationRequest(GenerationParams(duration_s=5.0, seed=0)),
            GenerationHooks(progress=lambda d, t: steps.append(d), should_cancel=lambda: len(steps) >= 10),
        )
    assert len(steps) == 10


def test_melody_model_continues_conditioned_on_the_prompt_melody(melody_generator: MusicGenGenerator) -> None:
    assert melody_generator.is_melody
    prompt = _tone(2.0)
    params = GenerationParams(prompt="piano", duration_s=1.0, seed=5)
    with_melody = melody_generator.generate(GenerationRequest(params, audio_prompt=prompt, melody=prompt))
    other_melody = _tone(2.0, hz=311.0)  # D sharp instead of A: another chroma
    with_other = melody_generator.generate(GenerationRequest(params, audio_prompt=prompt, melody=other_melody))
    assert with_melody.audio.shape == (1, SAMPLE_RATE)
    # The melody conditions generation: the same seed with another melody gives other audio.
    assert not torch.equal(with_melody.audio, with_other.audio)


def _audiocraft_windows(prompt_frames: int, total_frames: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(first frame, frames) of each pass of audiocraft 1.3.0's `MusicGen._generate_tokens` over a
    generation of `total_frames` (its prompt included) longer than one window."""
    windows, offset, prompt_length = [], 0, prompt_frames
    while offset + prompt_length < total_frames:
        length = min(total_frames - offset, window)  # int(min(duration - time_offset, max_duration) * rate)
        windows.append((offset, length))
        prompt_length = length - stride  # the next prompt: this pass's tokens after its first stride
        offset += stride
    return windows


@pytest.mark.parametrize(
    ("prompt_s", "new_s"),
    [(0, 45), (10, 30), (8, 30), (10, 28), (0, 120), (5, 100), (29, 2)],
    ids=["45 s job", "40 s continuation", "38 s continue", "38 s from 10 s", "120 s job", "105 s", "prompt-filled"],
)
def test_windows_start_where_audiocrafts_start(prompt_s: int, new_s: int) -> None:
    prompt, new = prompt_s * 50, new_s * 50
    windows = plan_windows(prompt, new, 1500, 900)
    spans, end = [], 0
    for window in windows:
        start = end - window.prompt_frames if spans else 0
        spans.append((start, window.prompt_frames + window.new_frames))
        end = start + window.prompt_frames + window.new_frames
    assert end == prompt + new
    if len(windows) > 1:
        assert spans == _audiocraft_windows(prompt, prompt + new, 1500, 900)


class _RecordingBackend:
    """The static engine, keeping every window's conditioning tensors as the generator handed them."""

    def __init__(self) -> None:
        self._backend = backend_named("static", slots=2)
        self.windows: list[WindowInputs] = []

    def decode_window(self, window: WindowInputs, call: WindowCall) -> torch.Tensor:
        self.windows.append(window)
        return self._backend.decode_window(window, call)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


def _audiocraft_window_melody(melody: torch.Tensor, time_offset_s: float, max_duration_s: float) -> torch.Tensor:
    """audiocraft 1.3.0, `MusicGen._generate_tokens`: the melody each window of a long generation
    is conditioned on (`positions % wav_length`)."""
    initial_position = int(time_offset_s * SAMPLE_RATE)
    positions = torch.arange(initial_position, initial_position + int(max_duration_s * SAMPLE_RATE))
    return melody[..., positions % melody.shape[-1]]


@pytest.mark.parametrize(
    ("prompt_s", "duration_s", "offsets_s"),
    [
        (0.0, 3.5, [0.0, 1.0, 2.0]),  # a melody job: windows at 0, 1 and 2 s of a 2 s window, 1 s stride
        (1.0, 2.5, [0.0, 1.0, 2.0]),  # a continuation: time counts from the prompt's start
        (0.0, 1.5, None),  # one window: the melody as it is
        (0.5, 1.5, None),
    ],
    ids=["job-three-windows", "continuation-three-windows", "job-one-window", "continuation-one-window"],
)
def test_each_window_is_conditioned_on_the_melody_audiocraft_gives_it(
    tiny_models: dict[str, str], prompt_s: float, duration_s: float, offsets_s: list[float] | None
) -> None:
    info = find(tiny_models["melody"])
    assert info is not None
    recording = _RecordingBackend()
    generator = MusicGenGenerator(info, "cpu", torch.float32, 2.0, 1.0, recording)  # type: ignore[arg-type]
    melody = _tone(1.3, hz=311.0)  # shorter than a window: looped
    melody.samples[0] *= torch.linspace(0.2, 1.0, melody.samples.shape[1])  # no two places alike
    params = GenerationParams(prompt="organ", duration_s=duration_s, seed=2)
    prompt = _tone(prompt_s) if prompt_s else None
    generator.generate(GenerationRequest(params, audio_prompt=prompt, melody=melody))
    if offsets_s is None:
        expected = [melody.samples]
    else:
        expected = [_audiocraft_window_melody(melody.samples, offset, 2.0) for offset in offsets_s]
    assert len(recording.windows) == len(expected)
    for window, window_melody in zip(recording.windows, expected, strict=True):
        wanted = generator.conditioning_inputs(params, window_melody)["input_features"]
        assert torch.equal(window.inputs["input_features"], wanted)


def test_concurrent_calls_are_safe_and_each_keeps_its_own_parameters(text_generator: MusicGenGenerator) -> None:
    seeds = (11, 12, 13)
    results: dict[int, torch.Tensor] = {}

    def run(seed: int) -> None:
        results[seed] = text_generator.generate(GenerationRequest(GenerationParams(duration_s=0.5, seed=seed))).audio

    def on_threads(seeds: tuple[int, ...]) -> None:
        # Each call on a thread of its own, as the service's requests: a thread's torch thread count
        # (one beside the engine, `engine.threads`) changes the codec's last bits.
        threads = [threading.Thread(target=run, args=(seed,)) for seed in seeds]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    for seed in seeds:
        on_threads((seed,))
    expected, results = results, {}
    on_threads(seeds)
    for seed, audio in expected.items():
        assert torch.equal(results[seed], audio)


def _held_at_once(
    shared: SharedEncodings, clip: AudioClip, encode: Callable[[], torch.Tensor], calls: int, all_asked: threading.Event
) -> list[torch.Tensor | RuntimeError]:
    """`calls` threads asking `shared` to encode `clip` at once (each asks before the next starts,
    as the takes of a request do within milliseconds while the first encodes for about a second);
    `all_asked` is set once all have asked. Their results, in no particular order."""
    results: list[torch.Tensor | RuntimeError] = []

    def ask() -> None:
        try:
            results.append(shared.encode(clip, encode))
        except RuntimeError as error:
            results.append(error)

    threads = [threading.Thread(target=ask) for _ in range(calls)]
    for asked, thread in enumerate(threads, start=1):
        thread.start()
        deadline = time.monotonic() + 5
        while sum(encoding.users for encoding in shared._encodings.values()) < asked:
            assert time.monotonic() < deadline, "a call never asked"
            time.sleep(0.001)
    all_asked.set()
    for thread in threads:
        thread.join()
    return results


def test_calls_handed_one_prompt_clip_at_once_encode_it_once() -> None:
    shared, clip = SharedEncodings(), _tone(0.1)
    encoded: list[int] = []
    all_asked = threading.Event()

    def encode() -> torch.Tensor:
        encoded.append(1)
        all_asked.wait(5)
        return torch.arange(8).view(4, 2)

    results = _held_at_once(shared, clip, encode, 3, all_asked)
    assert len(encoded) == 1
    assert len(results) == 3 and all(result is results[0] for result in results)
    # Forgotten once no call holds it: a later request with the same clip encodes again.
    assert shared._encodings == {}
    shared.encode(clip, encode)
    assert len(encoded) == 2


def test_clips_with_equal_samples_are_encoded_each() -> None:
    shared = SharedEncodings()
    encoded: list[int] = []

    def encode() -> torch.Tensor:
        encoded.append(1)
        return torch.zeros(4, 2)

    shared.encode(_tone(0.1), encode)
    shared.encode(_tone(0.1), encode)
    assert len(encoded) == 2


def test_when_the_first_encoding_fails_the_others_encode_for_themselves() -> None:
    shared, clip = SharedEncodings(), _tone(0.1)
    attempts: list[int] = []
    all_asked = threading.Event()

    def encode() -> torch.Tensor:
        attempts.append(1)
        if len(attempts) == 1:
            all_asked.wait(5)
            raise RuntimeError("the codec failed")
        return torch.ones(4, 2)

    results = _held_at_once(shared, clip, encode, 3, all_asked)
    assert len(attempts) == 3
    assert sum(isinstance(result, RuntimeError) for result in results) == 1
    assert shared._encodings == {}
