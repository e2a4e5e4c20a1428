"""The bound a machine sets on serving throughput, from rates measured in the same run as the
throughput it judges: the cores' matrix-product rate, the memory's read bandwidth and the codec's
time on one core.

For N requests released together the least wall time this model allows is

    N x prefill (the prompt's positions, both guidance rows, at the cores' rate: compute-bound)
  + steps x (weights + N slots' attention caches) / read bandwidth (a step reads them all once)
  + N x codec seconds on one core / cores (encoding the prompt, decoding the audio)

The parts are added, not overlapped: on a machine of a few cores the engine's thread computes on
all of them, so a request's codec work takes cores from the steps rather than running beside them.
The weights are read once per step for the whole batch: that is what batching buys, and why the
bound's ratio grows with N but not N-fold.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from _decoding import on_fresh_thread

FRAME_RATE = 50
DELAY = 3


def read_bandwidth_gb_s() -> float:
    """Bytes read per second by the best of six sums over 512 MiB: reading is all a step does
    with its weights."""
    import torch

    source = torch.ones(128 * 2**20)  # 512 MiB of float32
    best = float("inf")
    for _ in range(6):
        started = time.perf_counter()
        source.sum()
        best = min(best, time.perf_counter() - started)
    return source.numel() * 4 / best / 1e9


def decoder_bytes(model: Any) -> int:
    """The weights a step reads in full: every decoder layer's and the codebooks' heads. Not the
    embeddings (looked up, four rows a step), nor the cross-attention's key and value projections
    (applied once to a request's text; the steps read their results from the cache)."""
    layers = model.decoder.model.decoder.layers.named_parameters()
    read = [p for name, p in layers if not name.endswith(("encoder_attn.k_proj.weight", "encoder_attn.v_proj.weight"))]
    read += list(model.decoder.lm_heads.parameters())
    return sum(p.numel() * p.element_size() for p in read)


def product_flop_per_s(rows: int, inner: int, outer: int, dtype: Any, rounds: int = 5) -> float:
    """The cores' rate on a prefill-shaped matrix product (rows x inner by inner x outer) in `dtype`,
    the best of `rounds`, with torch's threads."""
    import torch

    left = torch.randn(rows, inner).to(dtype)
    right = torch.randn(inner, outer).to(dtype)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        left @ right
        best = min(best, time.perf_counter() - started)
    return 2 * rows * inner * outer / best


@dataclass(frozen=True)
class Rates:
    """What the machine did in this run."""

    flop_per_s: float  # all cores, the serving precision, a prefill's shape
    read_bytes_per_s: float
    codec_encode_s_per_s: float  # one core: seconds to encode a second of audio
    codec_decode_s_per_s: float  # one core: seconds to decode a second of audio
    cores: int


@dataclass(frozen=True)
class RequestCost:
    """What one request asks of the machine."""

    prompt_s: float  # seconds of audio prompt (0 for a job from text)
    clip_s: float  # seconds of new audio
    flop_per_position: float  # the decoder's weights x 2, for each row of each position
    weight_bytes: float  # what a step reads of the weights
    cache_bytes_per_position: float  # a slot's two rows, every layer, keys and values

    @property
    def steps(self) -> int:
        return round(self.clip_s * FRAME_RATE) + DELAY

    def prefill_s(self, rates: Rates) -> float:
        return (self.prompt_s * FRAME_RATE + 1) * 2 * self.flop_per_position / rates.flop_per_s

    def step_s(self, rates: Rates, batch: int) -> float:
        """A step's floor at `batch`: the weights and every slot's cache, read once."""
        positions = self.prompt_s * FRAME_RATE + self.steps / 2  # attended, on average over the steps
        return (self.weight_bytes + batch * self.cache_bytes_per_position * positions) / rates.read_bytes_per_s

    def codec_s(self, rates: Rates) -> float:
        """On one core: the prompt encoded and the new audio decoded."""
        return self.prompt_s * rates.codec_encode_s_per_s + self.clip_s * rates.codec_decode_s_per_s

    def bound_s(self, rates: Rates, batch: int) -> float:
        """The least wall seconds for `batch` such requests released together (the module)."""
        prefill = batch * self.prefill_s(rates)
        return prefill + self.steps * self.step_s(rates, batch) + batch * self.codec_s(rates) / rates.cores

    def arithmetic(self, rates: Rates, batch: int) -> str:
        """The bound's sum, written out."""
        return (
            f"{batch} x {self.prefill_s(rates):.2f} s prefill + {self.steps} steps x "
            f"{self.step_s(rates, batch) * 1000:.1f} ms + {batch} x {self.codec_s(rates):.2f} s codec / "
            f"{rates.cores} cores = {self.bound_s(rates, batch):.1f} s"
        )


def measure_rates(model: Any, dtype: Any, threads: int) -> Rates:
    """The machine's rates now: the product and the read bandwidth on `threads` torch threads (the
    engine's), the codec on one (a request's thread beside the engine)."""
    import torch

    from musicgen_bento.generation.codec import Codec

    config = model.config.decoder
    flop_per_s = on_fresh_thread(lambda: product_flop_per_s(1002, config.hidden_size, config.ffn_dim, dtype), threads)
    read = on_fresh_thread(read_bandwidth_gb_s, threads) * 1e9
    codec = Codec(model, "cpu", torch.float32)  # the codec stays float32 (docs/engine.md)
    audio = 0.3 * torch.randn(1, 10 * model.config.audio_encoder.sampling_rate)

    def codec_times() -> tuple[float, float]:
        with torch.inference_mode():
            started = time.perf_counter()
            codes = codec.encode(audio)
            encoded = time.perf_counter() - started
            started = time.perf_counter()
            codec.decode(codes)
            return encoded / 10, (time.perf_counter() - started) / 10

    encode_s, decode_s = on_fresh_thread(codec_times, 1)
    return Rates(flop_per_s, read, encode_s, decode_s, os.cpu_count() or 1)


def request_cost(model: Any, prompt_s: float, clip_s: float, weight_element: int, cache_element: int) -> RequestCost:
    """A request's cost on `model`, its weights served in `weight_element` bytes and its attention
    caches in `cache_element` bytes."""
    config = model.config.decoder
    parameters = decoder_bytes(model) / next(model.decoder.parameters()).element_size()
    cache = config.num_hidden_layers * 2 * config.hidden_size * 2 * cache_element  # keys and values, two rows
    return RequestCost(prompt_s, clip_s, 2 * parameters, parameters * weight_element, cache)
