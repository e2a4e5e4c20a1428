"""Level normalization: each strategy lands where it says, peaks stay below full scale, and
silence is never amplified."""

from __future__ import annotations

import math

import pytest
import torch

from musicgen_bento.audio.loudness import Normalization, integrated_loudness, normalize

RATE = 32000


def noise(channels: int = 1, seconds: float = 4.0, level: float = 0.3) -> torch.Tensor:
    return level * torch.randn(channels, round(seconds * RATE), generator=torch.Generator().manual_seed(0))


def tone(seconds: float = 4.0, level: float = 0.01) -> torch.Tensor:
    t = torch.arange(round(seconds * RATE)) / RATE
    return (level * torch.sin(2 * math.pi * 440 * t))[None]


SIGNALS = {
    "loud-noise": noise(level=0.8),
    "quiet-tone": tone(),
    "stereo-noise": noise(channels=2, level=0.05),
    "half-second": noise(seconds=0.5),
}


@pytest.mark.parametrize("target", [-14.0, -23.0, -9.0], ids=["streaming", "broadcast", "loud"])
@pytest.mark.parametrize("name", list(SIGNALS))
def test_loudness_lands_within_half_a_lu_with_peaks_below_full_scale(name: str, target: float) -> None:
    out = normalize(SIGNALS[name], RATE, "loudness", target)
    assert integrated_loudness(out, RATE) == pytest.approx(target, abs=0.5)
    assert float(out.abs().max()) <= 10 ** (-1 / 20) + 1e-6  # the limiter's -1 dBFS ceiling


@pytest.mark.parametrize("name", list(SIGNALS))
def test_peak_puts_the_highest_peak_at_minus_one_dbfs(name: str) -> None:
    out = normalize(SIGNALS[name], RATE, "peak", -14.0)
    assert float(out.abs().max()) == pytest.approx(10 ** (-1 / 20), rel=1e-5)


def test_rms_sets_minus_18_dbfs_and_clips_within_full_scale() -> None:
    out = normalize(tone(level=0.001), RATE, "rms", -14.0)
    assert 20 * math.log10(float(out.pow(2).mean().sqrt())) == pytest.approx(-18.0, abs=0.01)
    assert float(normalize(noise(level=2.0), RATE, "rms", -14.0).abs().max()) <= 1.0


@pytest.mark.parametrize("strategy", ["none", "clip"])
def test_clip_and_none_keep_the_level_within_full_scale(strategy: Normalization) -> None:
    loud = noise(level=2.0)
    out = normalize(loud, RATE, strategy, -14.0)
    assert float(out.abs().max()) <= 1.0
    quiet = tone()
    assert torch.equal(normalize(quiet, RATE, strategy, -14.0), quiet)


@pytest.mark.parametrize("strategy", ["peak", "rms", "loudness"])
def test_silence_is_left_as_it_is(strategy: Normalization) -> None:
    silence = torch.zeros(2, RATE)
    assert torch.equal(normalize(silence, RATE, strategy, -14.0), silence)
    near_silence = 1e-6 * torch.randn(1, RATE)
    assert torch.equal(normalize(near_silence, RATE, strategy, -14.0), near_silence)
