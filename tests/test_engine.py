"""The decoding engine on the tiny random models: the same tokens as transformers' `generate()`
(greedy and seeded sampling, text and melody models, with and without an audio prompt, alone and
batched with other requests), arrival-order admission, cancel, and the generator on both engines."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from musicgen_bento.audio.clip import AudioClip
from musicgen_bento.engine import DecodeEngine, DecodeRequest, EngineOptions, Sampling
from musicgen_bento.errors import GenerationCanceled, ShuttingDown
from musicgen_bento.generation.backends import backend_named
from musicgen_bento.generation.generator import MusicGenGenerator, null_text_when_empty
from musicgen_bento.generation.params import GenerationHooks, GenerationParams, GenerationRequest
from musicgen_bento.models.store import find
from musicgen_bento.models.tiny import build_tiny_model

from .conftest import decode_together

SAMPLE_RATE = 32000


@dataclass(frozen=True)
class Case:
    """One generation: conditioning, prompt, length, sampling and seed."""

    text: str
    prompt_frames: int
    new_frames: int
    sampling: Sampling
    seed: int
    melody_hz: float = 220.0


class Tiny:
    """A tiny model with its processor, a reference through `generate()`, and an engine."""

    def __init__(self, kind: str, slots: int = 4, dtype: torch.dtype = torch.float32, pad_rows: bool = False) -> None:
        self.kind = kind
        self.dtype = dtype
        self.model, self.processor = build_tiny_model(kind)  # type: ignore[arg-type]
        self.model.to(dtype)
        self.engine = DecodeEngine(self.model, "cpu", slots, EngineOptions(pad_rows=pad_rows))
        self._captured: list[torch.Tensor] = []
        decode = self.model.audio_encoder.decode

        def capture(codes: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self._captured.append(codes.clone())
            return decode(codes, *args, **kwargs)

        self.model.audio_encoder.decode = capture

    def inputs(self, case: Case) -> dict[str, torch.Tensor]:
        """The conditioning tensors the generator hands the model for `case`."""
        args: dict[str, Any] = {"text": [case.text], "padding": True, "return_tensors": "pt"}
        if self.kind == "melody":
            t = torch.arange(SAMPLE_RATE) / SAMPLE_RATE
            args.update(audio=(0.3 * torch.sin(2 * torch.pi * case.melody_hz * t)).numpy(), sampling_rate=SAMPLE_RATE)
        inputs = null_text_when_empty(self.processor(**args), case.text)
        if "input_features" in inputs:  # the chroma enters the model in its precision, as in the generator
            inputs["input_features"] = inputs["input_features"].to(self.dtype)
        return inputs

    def prompt(self, case: Case) -> torch.Tensor | None:
        if case.prompt_frames == 0:
            return None
        return torch.randint(0, 2048, (4, case.prompt_frames), generator=torch.Generator().manual_seed(case.seed))

    def reference(self, case: Case, inputs: dict[str, Any] | None = None) -> torch.Tensor:
        """The codes transformers' `generate()` produces, seeded as the service seeds it, from
        `inputs` (the case's conditioning tensors unless given)."""
        sampling = case.sampling
        sample = not sampling.greedy
        prompt = self.prompt(case)
        extra = {} if prompt is None else {"decoder_input_ids": prompt}
        torch.manual_seed(case.seed)
        with torch.inference_mode():
            self.model.generate(
                **(self.inputs(case) if inputs is None else inputs),
                **extra,
                max_new_tokens=case.new_frames + 3,
                do_sample=sample,
                temperature=sampling.temperature if sample else None,
                top_k=sampling.top_k if sample and sampling.top_k > 0 else None,
                top_p=sampling.top_p if sample and sampling.top_p > 0 else None,
                guidance_scale=sampling.cfg_coef if sampling.guided else None,
            )
        return self._captured[-1][0, 0]

    def request(self, case: Case) -> DecodeRequest:
        with torch.inference_mode():
            states, mask = self.engine.encode_conditioning(self.inputs(case))
        generator = torch.Generator().manual_seed(case.seed)
        return DecodeRequest(states, mask, self.prompt(case), case.new_frames, case.sampling, generator)

    def decode(self, case: Case, order: int = 0, on_step: Any = None) -> torch.Tensor:
        return self.engine.decode(self.request(case), (order,), on_step=on_step)


@pytest.fixture(scope="module", params=["text", "melody"])
def tiny(request: pytest.FixtureRequest) -> Tiny:
    return Tiny(request.param)


GREEDY = Sampling(cfg_coef=3.0, temperature=0.0)
TOP_K = Sampling(cfg_coef=3.0, temperature=1.0, top_k=250)
UNGUIDED = Sampling(cfg_coef=1.0, temperature=1.0, top_k=50)
TOP_P = Sampling(cfg_coef=3.0, temperature=0.7, top_k=0, top_p=0.9)
BOTH = Sampling(cfg_coef=5.0, temperature=1.3, top_k=100, top_p=0.8)


@pytest.mark.parametrize(
    "case",
    [
        Case("jazz", 20, 30, GREEDY, 0),
        Case("jazz", 20, 30, TOP_K, 1),
        Case("", 20, 30, UNGUIDED, 2),
        Case("soft piano", 20, 30, TOP_P, 3),
        Case("drums", 20, 30, BOTH, 4),
        Case("lo fi", 0, 40, TOP_K, 5),
        Case("lo fi", 0, 40, GREEDY, 6),
        Case("short", 1, 2, TOP_K, 7),
        Case("", 20, 30, TOP_K, 8),
    ],
    ids=[
        "greedy",
        "top-k",
        "no-guidance",
        "top-p",
        "top-k-and-top-p",
        "no-prompt",
        "no-prompt-greedy",
        "shortest-window",
        "empty-prompt",
    ],
)
def test_engine_gives_the_tokens_transformers_gives(tiny: Tiny, case: Case) -> None:
    expected = tiny.reference(case)
    codes = tiny.decode(case)
    assert codes.shape == (4, case.prompt_frames + case.new_frames)
    assert torch.equal(codes, expected)


@pytest.mark.parametrize("sampling", [GREEDY, TOP_K], ids=["greedy", "top-k"])
def test_an_empty_prompt_decodes_as_transformers_unconditional_inputs(sampling: Sampling) -> None:
    # audiocraft zeroes an empty description's mask: no text, the unconditional row's conditioning,
    # which transformers builds with `get_unconditional_inputs`.
    tiny = Tiny("text")
    case = Case("", 20, 30, sampling, 11)
    unconditional = tiny.model.get_unconditional_inputs(1)
    expected = tiny.reference(
        case, {"encoder_outputs": unconditional.encoder_outputs, "attention_mask": unconditional.attention_mask}
    )
    assert torch.equal(tiny.decode(case), expected)
    # Tokenized as it stands, "" conditions on the end-of-sequence token: other codes.
    assert not torch.equal(tiny.reference(case, dict(tiny.processor(text=[""], return_tensors="pt"))), expected)
    # A space is text, which the reference conditions on.
    spaced = dataclasses.replace(case, text=" ")
    assert not torch.equal(tiny.decode(spaced), expected)


def test_a_window_shorter_than_the_delay_pattern_is_refused(tiny: Tiny) -> None:
    with pytest.raises(ValueError, match="frames in all"):
        tiny.decode(Case("short", 1, 1, TOP_K, 7))


@pytest.mark.parametrize("stream_frames", [1, 5, 7], ids=["every-frame", "five", "seven"])
def test_a_streaming_request_gets_each_new_frame_once_in_order(tiny: Tiny, stream_frames: int) -> None:
    case = Case("jazz", 20, 30, TOP_K, 21)
    request = dataclasses.replace(tiny.request(case), stream_frames=stream_frames)
    handed: list[torch.Tensor] = []
    codes = tiny.engine.decode(request, (0,), on_frames=handed.append)
    streamed = torch.cat(handed, dim=1)
    # The frames completed before the end came while decoding; the last few (completed by the
    # final steps, fewer than stream_frames) are in the returned codes only.
    assert 30 - stream_frames < streamed.shape[1] <= 30
    assert all(part.shape[1] >= stream_frames for part in handed)
    assert torch.equal(streamed, codes[:, 20 : 20 + streamed.shape[1]])
    assert torch.equal(codes, tiny.decode(case))  # streaming changes no token


BATCH = [
    Case("jazz", 20, 30, TOP_K, 11),
    Case("rock", 5, 45, GREEDY, 12, melody_hz=311.0),
    Case("", 0, 12, UNGUIDED, 13),
    Case("piano solo with strings", 33, 20, BOTH, 14, melody_hz=440.0),
    Case("ambient", 10, 25, TOP_P, 15),
    Case("x", 2, 8, TOP_K, 16),
]


def _run_concurrently(tiny: Tiny, cases: list[Case]) -> dict[int, torch.Tensor]:
    return dict(enumerate(decode_together(tiny.engine, [tiny.request(case) for case in cases])))


def test_batched_requests_each_give_their_own_tokens(tiny: Tiny) -> None:
    # Six requests on four slots: they join and leave the batch at different steps, each with
    # its own text, prompt, length, sampling and seed.
    expected = {index: tiny.reference(case) for index, case in enumerate(BATCH)}
    steps_before = tiny.engine.steps_run
    results = _run_concurrently(tiny, BATCH)
    assert sorted(results) == list(range(len(BATCH)))
    for index, codes in results.items():
        assert torch.equal(codes, expected[index]), f"request {index} differs"
    steps = tiny.engine.steps_run - steps_before
    alone = sum(case.new_frames + 3 - 1 for case in BATCH)  # the first token of each comes from its prefill
    assert steps < alone  # requests shared steps


def test_takes_share_one_prefill_and_each_decodes_as_it_would_alone(tiny: Tiny) -> None:
    # The takes of one request: the same text and prompt, their own seeds. The service encodes
    # each take's text on its own (equal values, other tensors); both are recognised.
    case = Case("jazz", 20, 30, TOP_K, 1)
    with torch.inference_mode():
        states, mask = tiny.engine.encode_conditioning(tiny.inputs(case))
        again, again_mask = tiny.engine.encode_conditioning(tiny.inputs(case))
    prompt = tiny.prompt(case)
    assert prompt is not None

    def take(seed: int, conditioning: tuple[torch.Tensor, torch.Tensor | None] = (states, mask)) -> DecodeRequest:
        generator = torch.Generator().manual_seed(seed)
        return DecodeRequest(*conditioning, prompt.clone(), case.new_frames, case.sampling, generator)

    shared = tiny.engine.stats().prefills_shared
    together = decode_together(tiny.engine, [take(0), take(1), take(2, (again, again_mask)), take(3)])
    assert tiny.engine.stats().prefills_shared - shared == 3, "the takes each prefilled"
    alone = [tiny.engine.decode(take(seed), (0,)) for seed in range(4)]  # each its own prefill
    assert tiny.engine.stats().prefills_shared - shared == 3
    for seed in range(4):
        assert torch.equal(together[seed], alone[seed]), f"take {seed} differs from its prefill alone"
    assert len({tuple(codes[:, -10:].flatten().tolist()) for codes in together}) == 4, "the seeds' music differs"


def test_a_request_with_other_text_or_prompt_prefills_its_own(tiny: Tiny) -> None:
    case = Case("jazz", 20, 30, TOP_K, 1)
    base = tiny.request(case)
    other_text = tiny.request(dataclasses.replace(case, text="soft piano"))
    other_prompt = dataclasses.replace(base, prompt_codes=torch.roll(base.prompt_codes, 1, dims=1))  # type: ignore[arg-type]
    shared = tiny.engine.stats().prefills_shared
    codes = decode_together(tiny.engine, [base, other_text, other_prompt])
    assert tiny.engine.stats().prefills_shared == shared
    assert torch.equal(codes[1], tiny.reference(dataclasses.replace(case, text="soft piano")))


def test_waiting_requests_are_admitted_in_their_order() -> None:
    # One slot, held by a long request while three more queue up out of order (ranks 3, 1, 2);
    # when it leaves, the waiting ones take the slot by rank: arrival order, as the generator ranks them.
    tiny = Tiny("text", slots=1)
    admitted: list[tuple[int, ...]] = []
    tiny.engine.observer = lambda report: admitted.extend(report.admitted)
    all_queued = threading.Event()

    def hold_the_slot() -> None:
        if all_queued.is_set():
            raise GenerationCanceled("generation was canceled")

    def run(case: Case, order: int, on_step: Any = None) -> None:
        with contextlib.suppress(GenerationCanceled):
            tiny.decode(case, order=order, on_step=on_step)

    def start(case: Case, order: int, on_step: Any = None) -> threading.Thread:
        thread = threading.Thread(target=run, args=(case, order, on_step), daemon=True)
        thread.start()
        return thread

    def wait_for(condition: Any) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline
            time.sleep(0.005)

    threads = [start(Case("hold", 0, 2000, TOP_K, 0), 0, hold_the_slot)]
    wait_for(lambda: tiny.engine.stats().decoding)
    for count, order in enumerate((3, 1, 2), start=1):
        threads.append(start(Case("a", 0, 10, TOP_K, order), order))
        wait_for(lambda count=count: tiny.engine.stats().waiting == count)  # type: ignore[misc]
    all_queued.set()
    for thread in threads:
        thread.join(timeout=60)
    assert admitted == [(0,), (1,), (2,), (3,)]


def test_a_canceled_request_leaves_and_the_others_are_unaffected(tiny: Tiny) -> None:
    staying = Case("jazz", 10, 40, TOP_K, 21)
    leaving = Case("rock", 10, 200, TOP_K, 22)
    expected = tiny.reference(staying)
    steps: list[int] = []

    def count_and_cancel() -> None:
        steps.append(1)
        if len(steps) == 5:
            raise GenerationCanceled("generation was canceled")

    errors: list[BaseException] = []

    def run_leaving() -> None:
        try:
            tiny.decode(leaving, order=0, on_step=count_and_cancel)
        except GenerationCanceled as error:
            errors.append(error)

    thread = threading.Thread(target=run_leaving)
    thread.start()
    codes = tiny.decode(staying, order=1)
    thread.join(timeout=60)
    assert len(errors) == 1 and len(steps) == 5
    assert torch.equal(codes, expected)
    deadline = time.monotonic() + 10
    while tiny.engine.stats().decoding and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not tiny.engine.stats().decoding  # the canceled request left the batch


def test_close_fails_running_and_waiting_requests_and_refuses_new_ones() -> None:
    tiny = Tiny("text", slots=1)
    running_step = threading.Event()
    errors: dict[str, BaseException] = {}

    def run(name: str, case: Case) -> None:
        try:
            tiny.decode(case, on_step=running_step.set if name == "running" else None)
        except BaseException as error:
            errors[name] = error

    threads = [
        threading.Thread(target=run, args=("running", Case("a", 0, 2000, TOP_K, 1)), daemon=True),
        threading.Thread(target=run, args=("waiting", Case("b", 0, 20, TOP_K, 2)), daemon=True),
    ]
    threads[0].start()
    assert running_step.wait(timeout=30)
    threads[1].start()
    deadline = time.monotonic() + 10
    while not tiny.engine.stats().waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    tiny.engine.close(timeout_s=30)
    for thread in threads:
        thread.join(timeout=30)
    assert not tiny.engine.alive
    assert isinstance(errors.get("running"), ShuttingDown) and isinstance(errors.get("waiting"), ShuttingDown)
    with pytest.raises(ShuttingDown, match="shutting down"):
        tiny.decode(Case("c", 0, 10, TOP_K, 3))


def test_a_process_exiting_in_the_middle_of_a_decode_exits_cleanly(tmp_path: Path) -> None:
    # Without the engine's exit hook, the interpreter finalises while the worker thread is inside
    # a torch operation and the process aborts ("terminate called...", status 134).
    script = tmp_path / "exit_mid_decode.py"
    script.write_text(
        textwrap.dedent(
            """
            import threading
            import torch
            from musicgen_bento.engine import DecodeEngine, DecodeRequest, Sampling
            from musicgen_bento.models.tiny import build_tiny_model

            model, processor = build_tiny_model("text")
            engine = DecodeEngine(model, "cpu", 2)
            with torch.inference_mode():
                states, mask = engine.encode_conditioning(dict(processor(text=["x"], return_tensors="pt")))
            request = DecodeRequest(states, mask, None, 5000, Sampling(), torch.Generator().manual_seed(0))
            stepping = threading.Event()

            def decode():
                try:
                    engine.decode(request, (0,), on_step=stepping.set)
                except Exception as error:
                    print("decode ended:", type(error).__name__)

            threading.Thread(target=decode, daemon=True).start()
            stepping.wait(60)
            print("exiting while decoding")
            """
        )
    )
    for _ in range(2):
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
        assert "exiting while decoding" in done.stdout
        assert done.returncode == 0, done.stderr[-2000:]
        assert "terminate called" not in done.stderr


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["text", "melody"])
def test_reduced_precision_weights_decode_the_same_tokens_alone_and_batched(kind: str, dtype: torch.dtype) -> None:
    # GPUs serve in float16 or bfloat16: the cache, conditioning and logits must carry those
    # precisions through. Exact agreement with transformers is a float32 property (the two
    # round intermediate values differently), so this checks what must hold in any precision:
    # valid codes, and each request's tokens unchanged by what it is batched with.
    tiny = Tiny(kind, dtype=dtype)
    try:
        batched = _run_concurrently(tiny, BATCH)
        assert sorted(batched) == list(range(len(BATCH)))
        for index, case in enumerate(BATCH):
            alone = tiny.decode(case)
            assert alone.shape == (4, case.prompt_frames + case.new_frames)
            assert int(alone.min()) >= 0 and int(alone.max()) < 2048
            assert torch.equal(batched[index], alone), f"request {index} changed when batched"
    finally:
        tiny.engine.close()


def test_free_rows_computed_alongside_do_not_change_any_tokens() -> None:
    # A captured CUDA graph computes a power-of-two number of rows, the rest free slots (some
    # never used, with fully masked text attention). Running the eager step the same way on the
    # CPU (`pad_rows`) checks that those rows disturb nothing, whatever the batch looks like.
    tiny = Tiny("text", slots=4)
    padded = Tiny("text", slots=4, pad_rows=True)
    try:
        expected = {index: tiny.reference(case) for index, case in enumerate(BATCH)}
        results = _run_concurrently(padded, BATCH)
        assert padded.engine.stats().padded_rows > 0, "no step had free rows to compute"
        for index, codes in results.items():
            assert torch.equal(codes, expected[index]), f"request {index} differs"
    finally:
        tiny.engine.close()
        padded.engine.close()


def test_the_model_keeps_one_copy_of_the_weights_the_engine_joins() -> None:
    # The engine multiplies by joint q/k/v and head weights; the model's modules must become views
    # of them (one copy in memory, same values), also when a second engine joins them again.
    model, _ = build_tiny_model("text")
    attention = model.decoder.model.decoder.layers[0].self_attn
    before = [attention.q_proj.weight.clone(), attention.k_proj.weight.clone(), attention.v_proj.weight.clone()]
    first = DecodeEngine(model, "cpu", 1)
    second = DecodeEngine(model, "cpu", 1)
    for engine in (first, second):
        joint = engine.runner.decoder.qkv[0].weight
        assert joint.untyped_storage().data_ptr() == attention.q_proj.weight.untyped_storage().data_ptr()
        assert torch.equal(joint, torch.cat(before))
    assert second.runner.decoder.codebook_heads.weight.data_ptr() == model.decoder.lm_heads[0].weight.data_ptr()
    assert second.runner.decoder.embedding.data_ptr() == model.decoder.model.decoder.embed_tokens[0].weight.data_ptr()
    first.close()
    second.close()


def test_a_decoding_step_traces_as_one_graph(tiny: Tiny) -> None:
    """The step's forward has no host synchronisation and no data-dependent Python: TorchDynamo
    traces it whole, as one graph with no breaks, which is what CUDA graph capture needs too."""
    import torch._dynamo

    decoder = tiny.engine.runner.decoder
    forward = decoder.step
    reports: list[Any] = []

    def traced(*args: Any) -> torch.Tensor:
        if not reports:
            torch._dynamo.reset()
            reports.append(torch._dynamo.explain(forward)(*args))
        return forward(*args)

    decoder.step = traced  # type: ignore[method-assign]
    try:
        case = Case("jazz", 4, 6, GREEDY, 31)
        assert torch.equal(tiny.decode(case), tiny.reference(case))  # tracing changed nothing
    finally:
        del decoder.step
    assert reports, "no decoding step ran"
    assert (reports[0].graph_count, reports[0].graph_break_count) == (1, 0), reports[0].break_reasons


@pytest.fixture(scope="module")
def generators(tiny_models: dict[str, str]) -> Iterator[dict[tuple[str, str], MusicGenGenerator]]:
    made = {}
    for kind, name in tiny_models.items():
        info = find(name)
        assert info is not None
        for engine in ("static", "transformers"):
            made[kind, engine] = MusicGenGenerator(info, "cpu", torch.float32, 2.0, 1.0, backend_named(engine))
    yield made


def _tone(seconds: float, channels: int = 1, hz: float = 220.0) -> AudioClip:
    """A tone, a different pitch per channel."""
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return AudioClip(
        torch.stack([0.3 * torch.sin(2 * torch.pi * hz * (1 + c / 2) * t) for c in range(channels)]), SAMPLE_RATE
    )


@pytest.mark.parametrize("kind", ["text", "melody", "stereo"])
def test_both_engines_give_the_same_audio_across_windows(
    generators: dict[tuple[str, str], MusicGenGenerator], kind: str
) -> None:
    # A 2 s window with a 1 s stride: 2.5 s after a 1 s prompt takes three windows, the
    # later ones prompted (and, for melody models, conditioned) on generated audio.
    channels = 2 if kind == "stereo" else 1
    prompt = _tone(1.0, channels)
    params = GenerationParams(prompt="organ", duration_s=2.5, seed=9)
    request = GenerationRequest(params, audio_prompt=prompt, melody=prompt if kind == "melody" else None)
    steps: dict[str, list[tuple[int, int]]] = {"static": [], "transformers": []}
    results = {
        engine: generators[kind, engine].generate(
            request, GenerationHooks(progress=lambda d, t, e=engine: steps[e].append((d, t)))
        )
        for engine in ("static", "transformers")
    }
    assert results["static"].audio.shape == (channels, int(2.5 * SAMPLE_RATE))
    assert torch.equal(results["static"].audio, results["transformers"].audio)
    assert steps["static"] == steps["transformers"]


@pytest.mark.parametrize("engine", ["static", "transformers"])
@pytest.mark.parametrize("kind", ["text", "melody", "stereo"])
def test_streamed_audio_is_the_audio_within_float_rounding(
    generators: dict[tuple[str, str], MusicGenGenerator], kind: str, engine: str
) -> None:
    # Three windows, as above; the stream's chunks come while decoding (the engine) or a window at
    # a time (transformers' generate()), and the codec decodes them chunk by chunk.
    channels = 2 if kind == "stereo" else 1
    prompt = _tone(1.0, channels)
    params = GenerationParams(prompt="organ", duration_s=2.5, seed=9)
    request = GenerationRequest(params, audio_prompt=prompt, melody=prompt if kind == "melody" else None)
    generator = generators[kind, engine]
    whole = generator.generate(request).audio
    chunks: list[torch.Tensor] = []
    streamed = generator.generate(request, GenerationHooks(on_audio=chunks.append))
    assert len(chunks) > 1
    assert torch.equal(torch.cat(chunks, dim=1), streamed.audio)
    assert streamed.audio.shape == whole.shape
    # Chunked decoding with left context differs from one pass by float rounding only (codec.py).
    assert (streamed.audio - whole).abs().max() < 1e-5


def test_the_shortest_request_is_exactly_its_length(generators: dict[tuple[str, str], MusicGenGenerator]) -> None:
    # One new frame after a one-frame prompt is shorter than the delay pattern: the generator
    # decodes a few frames more and cuts them off.
    params = GenerationParams(duration_s=0.01, seed=1)
    result = generators["text", "static"].generate(GenerationRequest(params, audio_prompt=_tone(0.02)))
    assert result.audio.shape == (1, round(0.01 * SAMPLE_RATE))


def test_engine_setting_is_checked(tiny_models: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="engine must be one of"):
        backend_named("vllm")
