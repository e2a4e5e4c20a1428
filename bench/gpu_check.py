"""The GPU check: everything a GPU node must show, in one command that prints one table and writes
one JSON file, so a session lent a GPU verifies it in minutes instead of rediscovering it.

    .venv/bin/python bench/gpu_check.py [--tiny] [--out gpu-check.json] [--phases tokens precision ...]

Phases, in order (each a row or more of the table):

- `tokens`: the static engine against transformers' `generate()`, token for token, greedy in
  float32 on the device (musicgen-small shape), and the engine with CUDA graphs on against off.
- `precision`: float16 and bfloat16 over 30 s at the musicgen-medium and musicgen-melody shapes,
  greedy: whether every step stayed finite (the engine's non-finite guard), and the share of
  tokens equal to float32's.
- `memory`: a melody-shaped server under `MUSICGEN_MAX_MEMORY_MB=8000` with the default slots (the
  orchestrator's `max_mb`): its plan, and the peak GPU memory while every planned slot decodes a
  full window, against the 8000.
- `http`: through `bentoml serve` and HTTP at the musicgen-small shape: 1, 8 and 16 concurrent
  `/continue` calls (throughput, and the ratio to the same calls one after another), the time to
  first audio of `/continue/stream`, and a job from submission to its file.
- `targets`: the GPU targets of the benchmarks page, through HTTP: a 30 s job at the musicgen-small
  and at the musicgen-medium shape, and 16 concurrent 30 s musicgen-medium jobs.

The models are random weights at the published decoder shapes (no model hub is reachable where
this runs): noise, not music. They give real timing, memory and kernels, and tokens to compare; they
do not reproduce a trained checkpoint's activations, so "finite" here does not prove that trained
weights stay finite in float16 (the engine's guard is what catches that in service).

`--tiny` runs every phase on the tiny random models with short durations, on whatever device
there is: the CI runs it on a CPU (`tests/test_gpu_check.py`) so that it cannot rot. On a CPU the
report says so in its first line, and the GPU targets are shown, not judged.

Exit status: 1 when a correctness check failed (tokens differ in float32, graphs change tokens,
a step turned non-finite, the peak passed the budget), else 0; missed speed targets are in the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from _support import starting, use_private_store, write_tone
from bench_service_throughput import together

PHASES = ("tokens", "precision", "memory", "http", "targets")
SAMPLE_RATE = 32000
FRAME_RATE = 50
MEMORY_BUDGET_MB = 8000
# The targets of docs/benchmarks.md, in wall seconds: (what, shape, clips at once, seconds of the target).
GPU_TARGETS = (
    ("musicgen-small, one 30 s job", "musicgen-small", 1, 1.5),
    ("musicgen-medium, one 30 s job", "musicgen-medium", 1, 5.0),
    ("musicgen-medium, 16 30 s jobs at once", "musicgen-medium", 16, 12.0),
)


@dataclass(frozen=True)
class Scale:
    """What the check runs at: the published shapes on a GPU, the tiny models (`--tiny`)."""

    tiny: bool
    tokens_frames: int  # frames of the float32 comparison with transformers
    precision_s: float  # seconds of each precision's greedy generation
    clip_s: float  # seconds of each HTTP /continue call and job
    target_s: float  # seconds of each target's job

    def shape(self, published: str) -> str:
        """The model standing in for `published` at this scale."""
        if not self.tiny:
            return published
        return "tiny-melody" if published == "musicgen-melody" else "tiny"


FULL = Scale(tiny=False, tokens_frames=500, precision_s=30.0, clip_s=10.0, target_s=30.0)
TINY = Scale(tiny=True, tokens_frames=100, precision_s=2.0, clip_s=1.0, target_s=2.0)


@dataclass
class Row:
    phase: str
    check: str
    measured: str
    expected: str
    passed: bool | None  # None: a figure, or a target not judged on this device


@dataclass
class Report:
    device: str
    hardware: str
    scale: str
    started: str
    rows: list[Row] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def add(self, phase: str, check: str, measured: str, expected: str = "", passed: bool | None = None) -> None:
        row = Row(phase, check, measured, expected, passed)
        self.rows.append(row)
        print(f"  [{phase}] {check}: {measured}" + (f" (expected {expected})" if expected else ""), flush=True)

    @property
    def failed(self) -> list[Row]:
        return [row for row in self.rows if row.passed is False and row.phase != "targets"]

    def table(self) -> str:
        mark = {True: "yes", False: "NO", None: ""}
        lines = ["| phase | check | measured | expected | ok |", "|---|---|---|---|---|"]
        for row in self.rows:
            lines.append(f"| {row.phase} | {row.check} | {row.measured} | {row.expected} | {mark[row.passed]} |")
        return "\n".join(lines)


# -- models ------------------------------------------------------------------------------------------


class Models:
    """Random-weight models, built on the device (seeded: the same weights every time) and imported
    into the model store for the servers."""

    def __init__(self, workdir: Path, device: str) -> None:
        self._workdir = workdir
        self._device = device

    def build(self, shape: str, dtype: Any = None) -> tuple[Any, Any]:
        """(model, processor) of `shape` on the device, in `dtype` (float32 unless given)."""
        import torch

        from musicgen_bento.models.tiny import build_real_shape_model, build_tiny_model

        def make() -> tuple[Any, Any]:
            if shape.startswith("tiny"):
                return build_tiny_model("melody" if shape == "tiny-melody" else "text")  # type: ignore[no-any-return]
            return build_real_shape_model(shape)  # type: ignore[no-any-return]

        if self._device == "cpu":
            model, processor = make()
        else:
            try:
                with torch.device(self._device):  # initialised where it runs: seconds, not a minute
                    model, processor = make()
            except Exception as error:  # an initialiser that insists on the CPU: build there, then move
                print(f"  (building {shape} on the CPU: {type(error).__name__}: {error})", flush=True)
                model, processor = make()
        return model.to(self._device, dtype or torch.float32), processor

    def tag(self, shape: str) -> str:
        """Imports `shape` into the model store (half the bytes on a GPU: the servers serve it in
        bfloat16 anyway) and returns its tag."""
        import torch

        from musicgen_bento.models.store import import_directory

        model, processor = self.build(shape, torch.bfloat16 if self._device != "cpu" else None)
        directory = self._workdir / f"checkpoint-{shape}"
        model.save_pretrained(directory)
        processor.save_pretrained(directory)
        del model
        info = import_directory(directory, f"gpu-check-{shape}", "random weights (GPU check)", "none")
        shutil.rmtree(directory)  # the store holds its own copy
        return info.tag


def conditioning(model: Any, processor: Any, text: str) -> dict[str, Any]:
    """The processor's tensors for `text` (and, for a melody model, a 10 s arpeggio as its melody)."""
    import torch

    args: dict[str, Any] = {"text": [text], "padding": True, "return_tensors": "pt"}
    if hasattr(model.config, "num_chroma"):
        t = torch.arange(10 * SAMPLE_RATE) / SAMPLE_RATE
        pitch = 220.0 * 2 ** (torch.floor(t * 2) % 4 / 3)  # a note every half second
        args.update(audio=(0.3 * torch.sin(2 * torch.pi * pitch * t)).numpy(), sampling_rate=SAMPLE_RATE)
    inputs = dict(processor(**args))
    if "input_features" in inputs:
        inputs["input_features"] = inputs["input_features"].to(model.dtype)
    return {key: value.to(model.device) for key, value in inputs.items()}


def engine_codes(model: Any, inputs: dict[str, Any], frames: int, graphs: bool = True) -> Any:
    """Greedy codes (codebooks, frames) of the static engine on the model's device; raises the
    engine's NonFiniteOutput when a step turns non-finite."""
    import torch

    from musicgen_bento.engine import DecodeEngine, DecodeRequest, EngineOptions, Sampling

    engine = DecodeEngine(model, str(model.device), 2, EngineOptions(use_cuda_graphs=graphs))
    try:
        with torch.inference_mode():
            states, mask = engine.encode_conditioning(inputs)
        request = DecodeRequest(
            states, mask, None, frames, Sampling(cfg_coef=3.0, temperature=0.0), torch.Generator().manual_seed(0)
        )
        return engine.decode(request, (0,))
    finally:
        engine.close()


def transformers_codes(model: Any, inputs: dict[str, Any], frames: int) -> Any:
    """Greedy codes (codebooks, frames) of transformers' `generate()`, guided as the engine's."""
    import torch

    captured: list[Any] = []
    decode = model.audio_encoder.decode

    def capture(codes: Any, *args: Any, **kwargs: Any) -> Any:
        captured.append(codes.clone())
        return decode(codes, *args, **kwargs)

    model.audio_encoder.decode = capture
    try:
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=frames + 3, do_sample=False, guidance_scale=3.0)
    finally:
        del model.audio_encoder.decode  # the class's method again
    return captured[-1][0, 0].cpu()


def agreement(codes: Any, reference: Any) -> tuple[float, int | None]:
    """The share of tokens equal to the reference's, and the first frame where any differs."""
    equal = codes == reference
    differing = (~equal.all(dim=0)).nonzero()
    return float(equal.float().mean()), int(differing[0]) if len(differing) else None


def share_text(share: float, first: int | None) -> str:
    return f"{share:.1%} equal" + ("" if first is None else f", first difference at frame {first}")


# -- phases ------------------------------------------------------------------------------------------


def check_tokens(report: Report, models: Models, scale: Scale, device: str) -> None:
    import torch

    shape = scale.shape("musicgen-small")
    model, processor = models.build(shape)
    inputs = conditioning(model, processor, "gpu check")
    frames = scale.tokens_frames
    expected = transformers_codes(model, inputs, frames)
    codes = engine_codes(model, inputs, frames)
    share, first = agreement(codes, expected)
    report.add(
        "tokens",
        f"{shape} float32, {frames} frames greedy: engine = transformers",
        share_text(share, first),
        "100% equal",
        share == 1.0,
    )
    if device.startswith("cuda"):
        eager = engine_codes(model, inputs, frames, graphs=False)
        share, first = agreement(codes, eager)
        on_off = share_text(share, first)
        report.add("tokens", f"{shape} float32: CUDA graphs on = off", on_off, "100% equal", share == 1.0)
    else:
        report.add("tokens", "CUDA graphs on = off", "not measured: not a CUDA device")
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def check_precision(report: Report, models: Models, scale: Scale, device: str) -> None:
    import torch

    from musicgen_bento.engine.finite import NonFiniteOutput

    frames = int(scale.precision_s * FRAME_RATE)
    for published in ("musicgen-medium", "musicgen-melody"):
        shape = scale.shape(published)
        reference = None
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            name = str(dtype).removeprefix("torch.")
            check = f"{shape} {name}, {scale.precision_s:g} s greedy"
            model, processor = models.build(shape, dtype)
            try:
                codes = engine_codes(model, conditioning(model, processor, "gpu check"), frames)
            except NonFiniteOutput as error:
                report.add("precision", check, error.message, "finite", False)
                continue
            finally:
                del model
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
            report.add("precision", check, "finite", "finite", True)
            if reference is None:
                reference = codes
            else:
                share, first = agreement(codes, reference)
                report.add("precision", f"{shape} {name}: tokens equal to float32's", share_text(share, first))
                report.figures[f"precision.{shape}.{name}.share_equal"] = share


def check_memory(report: Report, url: str, scale: Scale, source: Path) -> None:
    import httpx

    shape = scale.shape("musicgen-melody")
    with httpx.Client(timeout=3600) as http:
        plan = http.get(f"{url}/health").json()["memory"]
        report.add(
            "memory",
            f"{shape}: the plan under MUSICGEN_MAX_MEMORY_MB={MEMORY_BUDGET_MB}",
            f"{plan['slots']} slots, {plan['planned_mb']} MB planned ({plan['weights_mb']} weights, "
            f"{plan['cache_mb_per_slot']} a slot, {plan['margin_mb']} margin)",
        )
        # Every slot busy with a full window: a 10 s prompt (melody models follow it) and 20 s of music.
        body = {"audio_path": str(source), "duration_s": 2.0 if scale.tiny else 20.0}
        together([partial(_post, http, f"{url}/continue", {**body, "seed": index}) for index in range(plan["slots"])])
        peak = http.get(f"{url}/health").json()["memory"]["peak_mb"]
    where = "GPU allocations" if report.device.startswith("cuda") else "the process's resident set"
    report.add(
        "memory",
        f"{shape}: peak with every slot decoding ({where})",
        f"{peak} MB",
        f"<= {MEMORY_BUDGET_MB} MB",
        peak <= MEMORY_BUDGET_MB,
    )
    report.figures["memory.peak_mb"] = peak
    report.figures["memory.plan"] = plan


def check_http(report: Report, url: str, source: Path, scale: Scale, shape: str) -> None:
    import httpx
    from bench_streaming import time_stream

    clip = scale.clip_s

    def call(index: int) -> Callable[[], None]:
        body = {"audio_path": str(source), "prompt": f"check {index}", "duration_s": clip, "seed": index}
        return lambda: _post(http, f"{url}/continue", body)

    with httpx.Client(timeout=3600) as http:
        call(10_000)()  # first-use costs, untimed
        alone = []
        for index in range(4):
            started = time.perf_counter()
            call(index)()
            alone.append(time.perf_counter() - started)
        one_s = statistics.mean(alone)
        for count in (1, 8, 16):
            wall = together([call(index) for index in range(count)])
            report.add(
                "http",
                f"{shape}: {count} concurrent /continue, {clip:g} s clips",
                f"{count * clip / wall:.2f} s of audio/s, {count * one_s / wall:.2f}x one after another",
            )
            report.figures[f"http.continue.{count}.ratio"] = count * one_s / wall
        report.figures["http.continue.alone_s"] = alone
        body = {"audio_path": str(source), "prompt": "check", "duration_s": clip, "seed": 1}
        _, first_audio, end, _ = time_stream(url, body)
        stream = f"first audio {first_audio:.3f} s, end {end:.2f} s"
        report.add("http", f"{shape}: /continue/stream, {clip:g} s", stream)
        job_s = job_wall_s(url, [{"prompt": "check job", "duration_s": clip, "seed": 2}])
        report.add("http", f"{shape}: a {clip:g} s job, submitted to succeeded", f"{job_s:.2f} s")


def check_targets(report: Report, urls: dict[str, str], scale: Scale, on_gpu: bool) -> None:
    for what, published, count, target_s in GPU_TARGETS:
        shape = scale.shape(published)
        bodies = [{"prompt": f"target {index}", "duration_s": scale.target_s, "seed": index} for index in range(count)]
        url = urls[f"serve {shape}"]
        job_wall_s(url, bodies[:1])  # first-use costs of this length, untimed
        wall = job_wall_s(url, bodies)
        label = what if not scale.tiny else f"{what}, at {shape} and {scale.target_s:g} s"
        met = wall <= target_s if on_gpu else None
        report.add("targets", label, f"{wall:.2f} s", f"<= {target_s:g} s on a GPU", met)


# -- HTTP helpers ------------------------------------------------------------------------------------


def _post(http: Any, url: str, body: dict[str, Any]) -> None:
    response = http.post(url, json=body)
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text}")


def job_wall_s(url: str, bodies: list[dict[str, Any]]) -> float:
    """Wall seconds from submitting `bodies` as jobs at once to the last one's success."""
    from musicgen_bento.api.client import MusicGenClient

    with MusicGenClient(url, timeout_s=3600) as client:
        started = time.perf_counter()
        jobs = [client.submit(**body, idempotency_key=uuid.uuid4().hex) for body in bodies]
        for job in jobs:
            view = client.wait(job.job_id, timeout_s=3600, poll_s=0.05)
            if view.status != "succeeded":
                raise RuntimeError(f"job {job.job_id} {view.status}: {view}")
        return time.perf_counter() - started


def server_settings(
    models: Models, scale: Scale, phases: list[str], common: dict[str, str]
) -> dict[str, dict[str, str]]:
    """The servers the served phases need, by role: `budget` (the melody shape under the 8000 MB
    budget, default slots) and `serve <shape>` (16 slots) for each shape `http` and `targets` use."""
    wanted: dict[str, dict[str, str]] = {}
    if "memory" in phases:
        melody = models.tag(scale.shape("musicgen-melody"))
        wanted["budget"] = {**common, "MUSICGEN_MODEL": melody, "MUSICGEN_MAX_MEMORY_MB": str(MEMORY_BUDGET_MB)}
    shapes = [scale.shape("musicgen-small")] if "http" in phases else []
    if "targets" in phases:
        shapes += [scale.shape(published) for _, published, _, _ in GPU_TARGETS]
    for shape in dict.fromkeys(shapes):
        wanted[f"serve {shape}"] = {**common, "MUSICGEN_MODEL": models.tag(shape), "MUSICGEN_BATCH_SLOTS": "16"}
    return wanted


# -- the command -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny models and short durations (CI, any device)")
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"), help="where the JSON report goes")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    args = parser.parse_args()
    use_private_store()

    import torch
    from _decoding import hardware

    scale = TINY if args.tiny else FULL
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    on_gpu = device.startswith("cuda")
    report = Report(
        device=device,
        hardware=hardware(device),
        scale="tiny" if args.tiny else "published shapes",
        started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    if on_gpu:
        print(f"GPU check on {report.hardware} ({platform.node()}), {report.scale}", flush=True)
    else:
        print(
            f"MEASURED ON A CPU, NOT A GPU ({report.hardware}): these figures say nothing about a GPU; "
            f"the GPU targets are shown, not judged. Scale: {report.scale}.",
            flush=True,
        )
    workdir = Path(tempfile.mkdtemp(prefix="musicgen-gpu-check-"))
    models = Models(workdir, device)
    common = {
        "MUSICGEN_OUTPUT_DIR": str(workdir / "output"),
        "MUSICGEN_DATA_DIR": str(workdir / "data"),
        "MUSICGEN_UPLOAD_DIR": str(workdir / "uploads"),
        "MUSICGEN_MAX_DURATION_S": "30",
        "MUSICGEN_WARMUP_S": "1",
    }
    source = write_tone(workdir / "source.wav", seconds=10, sample_rate=SAMPLE_RATE)
    started = time.perf_counter()
    try:
        with ExitStack() as stack:
            # The servers load and warm up while the in-process phases run.
            starting_servers = {
                role: stack.enter_context(starting(settings))
                for role, settings in server_settings(models, scale, args.phases, common).items()
            }
            if "tokens" in args.phases:
                check_tokens(report, models, scale, device)
            if "precision" in args.phases:
                check_precision(report, models, scale, device)
            for server in starting_servers.values():
                server.wait_until("ready", timeout=900)
            urls = {role: server.url for role, server in starting_servers.items()}
            if "memory" in args.phases:
                check_memory(report, urls["budget"], scale, source)
            if "http" in args.phases:
                shape = scale.shape("musicgen-small")
                check_http(report, urls[f"serve {shape}"], source, scale, shape)
            if "targets" in args.phases:
                check_targets(report, urls, scale, on_gpu)
    finally:
        report.figures["wall_s"] = round(time.perf_counter() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**asdict(report), "command": sys.argv}, indent=2) + "\n")
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{report.table()}\n", flush=True)
    print(f"{len(report.rows)} rows in {report.figures['wall_s']} s; the report is in {args.out}", flush=True)
    if report.failed:
        print(f"FAILED: {', '.join(row.check for row in report.failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
