"""Level normalization of generated audio, as audiocraft's `audio_write` offers it: clip, peak,
RMS, or integrated loudness (ITU-R BS.1770, measured with torchaudio) with a soft limiter that
keeps peaks below full scale. Silence is left as it is, never amplified into noise."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torchaudio.functional as audio_functional

Normalization = Literal["none", "clip", "peak", "rms", "loudness"]

PEAK_HEADROOM_DB = 1.0  # `peak` and the limiter's ceiling: 1 dB below full scale
RMS_HEADROOM_DB = 18.0  # `rms`: the level audiocraft's rms strategy sets
SILENCE_LUFS = -70.0  # BS.1770's absolute gate: quieter than this is silence
_SILENCE_PEAK = 10 ** (-80 / 20)
# Integrated loudness needs one 400 ms gating block; shorter audio is measured by its RMS instead.
_MIN_LOUDNESS_S = 0.4
_LOUDNESS_TOLERANCE_LU = 0.1
_LOUDNESS_PASSES = 6


def normalize(samples: torch.Tensor, sample_rate: int, strategy: Normalization, target_lufs: float) -> torch.Tensor:
    """`samples` (channels, frames) at the level `strategy` asks for, within ±1.

    `none` and `clip` leave the level as generated (the file formats hold ±1, so both clip there);
    `peak` scales the highest peak to -1 dBFS; `rms` scales to -18 dBFS RMS, then clips; `loudness`
    scales to `target_lufs` integrated loudness, with a soft limiter for the peaks that would pass
    -1 dBFS. Near-silent audio is returned unchanged by every strategy.
    """
    samples = samples.to(torch.float32)
    if strategy in ("none", "clip"):
        return samples.clamp(-1.0, 1.0)
    peak = float(samples.abs().max()) if samples.numel() else 0.0
    if peak < _SILENCE_PEAK:
        return samples.clamp(-1.0, 1.0)
    if strategy == "peak":
        return samples * (_db_to_gain(-PEAK_HEADROOM_DB) / peak)
    if strategy == "rms":
        rms = float(samples.pow(2).mean().sqrt())
        return (samples * (_db_to_gain(-RMS_HEADROOM_DB) / rms)).clamp(-1.0, 1.0)
    return _to_loudness(samples, sample_rate, target_lufs)


def integrated_loudness(samples: torch.Tensor, sample_rate: int) -> float:
    """ITU-R BS.1770 integrated loudness in LUFS (-inf for silence); RMS level in dBFS for audio
    shorter than one 400 ms gating block."""
    if samples.shape[-1] < _MIN_LOUDNESS_S * sample_rate:
        rms = float(samples.pow(2).mean().sqrt())
        return 20 * math.log10(rms) if rms > 0 else -math.inf
    value = float(audio_functional.loudness(samples, sample_rate))
    return value if math.isfinite(value) else -math.inf


def _to_loudness(samples: torch.Tensor, sample_rate: int, target_lufs: float) -> torch.Tensor:
    """Gain to the target, corrected over a few passes for what the limiter takes away."""
    measured = integrated_loudness(samples, sample_rate)
    if measured < SILENCE_LUFS:
        return samples.clamp(-1.0, 1.0)
    gain = _db_to_gain(target_lufs - measured)
    limited = _soft_limit(samples * gain)
    for _ in range(_LOUDNESS_PASSES):
        error = target_lufs - integrated_loudness(limited, sample_rate)
        if abs(error) <= _LOUDNESS_TOLERANCE_LU:
            break
        gain *= _db_to_gain(error)
        limited = _soft_limit(samples * gain)
    return limited


def _soft_limit(samples: torch.Tensor) -> torch.Tensor:
    """Leaves samples below the knee alone and bends the rest smoothly towards the -1 dBFS ceiling
    (slope 1 at the knee, never reaching the ceiling), so no peak passes it."""
    ceiling = _db_to_gain(-PEAK_HEADROOM_DB)
    knee = 0.7 * ceiling
    magnitude = samples.abs()
    over = magnitude > knee
    if not bool(over.any()):
        return samples
    bent = knee + (ceiling - knee) * torch.tanh((magnitude - knee) / (ceiling - knee))
    return torch.where(over, samples.sign() * bent, samples)


def _db_to_gain(decibels: float) -> float:
    return float(10 ** (decibels / 20))
