"""Audio as the model sees it: a clip of samples at a rate, and the operations on clips
(resampling and channel mixing to the model's format, fitting a length, joining a continuation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio.functional as audio_functional

from .resample import to_channels

# How long the correction at a continuation's join fades out: long enough to be inaudible,
# short enough not to touch the music.
_JOIN_FADE_S = 0.005


@dataclass(frozen=True)
class AudioClip:
    """Audio as float32 samples shaped (channels, frames), with its sample rate."""

    samples: torch.Tensor
    sample_rate: int

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def frames(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def to_model_format(clip: AudioClip, sample_rate: int, channels: int) -> AudioClip:
    """Resamples to the model's rate (torchaudio) and mixes or duplicates to its channel count."""
    samples = clip.samples
    if clip.sample_rate != sample_rate:
        samples = audio_functional.resample(samples, clip.sample_rate, sample_rate)
    return AudioClip(to_channels(samples, channels).contiguous(), sample_rate)


def fit_length(samples: torch.Tensor, frames: int) -> torch.Tensor:
    """Cuts `samples` (channels, n) to `frames`, or pads with silence."""
    if samples.shape[1] >= frames:
        return samples[:, :frames]
    padding = torch.zeros(samples.shape[0], frames - samples.shape[1], dtype=samples.dtype)
    return torch.cat([samples, padding], dim=1)


def smooth_join(
    before: torch.Tensor, after: torch.Tensor, reference_end: torch.Tensor, sample_rate: int
) -> torch.Tensor:
    """Shifts the start of `after` so it continues from the last sample of `before` without a click.

    The model decodes its prompt and continuation as one stream, so `after` continues smoothly
    from the model's own rendering of the prompt (`reference_end`, its last sample per channel),
    not from the original source. The difference between the two at the join is added to
    `after` and faded out over a few milliseconds.
    """
    fade = min(after.shape[1], max(1, int(_JOIN_FADE_S * sample_rate)))
    offset = (before[:, -1] - reference_end).unsqueeze(1)
    ramp = torch.linspace(1.0, 0.0, fade, dtype=after.dtype).unsqueeze(0)
    joined = after.clone()
    joined[:, :fade] += offset * ramp
    return joined
