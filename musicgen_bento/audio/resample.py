"""Output audio in a session's form: resampled from the model's rate to the file's, and mixed or
duplicated to the file's channel count, whole (a file) or chunk by chunk (a stream).

The resampler is torchaudio's windowed-sinc one with the parameters torchaudio documents as
"kaiser_best" (a 64-zero-crossing Kaiser window, beta 14.77, roll-off 0.9476, after librosa's and
resampy's best setting): the passband is flat to about 95% of the lower Nyquist frequency and the
stopband lies more than 100 dB down, well below 24-bit noise. Its defaults (6 zero crossings, a
Hann window) are meant for feature extraction, not for files a producer mixes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchaudio.functional as audio_functional

LOWPASS_FILTER_WIDTH = 64
ROLLOFF = 0.9475937167399596
BETA = 14.769656459379492


def resample(samples: torch.Tensor, from_rate: int, to_rate: int) -> torch.Tensor:
    """`samples` (channels, n) at `to_rate`; the same tensor when the rates agree."""
    if from_rate == to_rate:
        return samples
    return audio_functional.resample(
        samples,
        from_rate,
        to_rate,
        lowpass_filter_width=LOWPASS_FILTER_WIDTH,
        rolloff=ROLLOFF,
        resampling_method="sinc_interp_kaiser",
        beta=BETA,
    )


def to_channels(samples: torch.Tensor, channels: int) -> torch.Tensor:
    """`samples` (channels, n) with `channels` channels: several mixed to one, one copied to several."""
    if samples.shape[0] == channels:
        return samples
    mono = samples.mean(dim=0, keepdim=True)
    return mono.expand(channels, -1).contiguous()


@dataclass(frozen=True)
class OutputForm:
    """The written file's sample rate, channel count and sample format."""

    sample_rate: int
    channels: int
    sample_format: str  # pcm16, pcm24 or float32

    def conform(self, samples: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """`samples` at `sample_rate` in this form's rate and channel count."""
        return to_channels(resample(samples, sample_rate, self.sample_rate), self.channels)


class StreamingResampler:
    """Resamples a signal that arrives in chunks, giving what the whole signal's resampling gives
    (within float rounding) as soon as the input it depends on has come.

    The resampler's output repeats its pattern every `from / gcd` input samples; each output
    depends on the input within its filter's reach on both sides. A chunk is resampled with whole
    periods of input before it (its left context) and its outputs are handed on only as far as the
    input after them has arrived; the rest wait for the next chunk, or for `finish`.
    """

    def __init__(self, from_rate: int, to_rate: int) -> None:
        divisor = math.gcd(from_rate, to_rate)
        self._from, self._to = from_rate, to_rate
        self._period_in, self._period_out = from_rate // divisor, to_rate // divisor
        # torchaudio's kernel reaches this far on either side, in (reduced) input samples.
        reach = math.ceil(LOWPASS_FILTER_WIDTH * self._period_in / (min(self._period_in, self._period_out) * ROLLOFF))
        self._context = math.ceil(reach / self._period_in + 1) * self._period_in
        self._held: torch.Tensor | None = None  # input from `_held_from` on
        self._held_from = 0
        self._received = 0
        self._emitted_periods = 0

    def push(self, samples: torch.Tensor) -> torch.Tensor:
        """The output that the input so far settles: (channels, m), m possibly 0."""
        self._held = samples if self._held is None else torch.cat([self._held, samples], dim=1)
        self._received += int(samples.shape[1])
        ready = max(0, (self._received - self._context) // self._period_in)
        return self._emit(ready, None)

    def finish(self) -> torch.Tensor:
        """The rest of the output, up to what the whole input resamples to."""
        total = math.ceil(self._received * self._to / self._from)
        return self._emit(None, total)

    def _emit(self, ready_periods: int | None, total: int | None) -> torch.Tensor:
        assert self._held is not None
        if ready_periods is not None and ready_periods <= self._emitted_periods:
            return self._held[:, :0]
        first_in = max(0, self._emitted_periods * self._period_in - self._context)
        segment = self._held[:, first_in - self._held_from :]
        if ready_periods is not None:  # with the input after the last ready period, as far as it reaches
            segment = segment[:, : ready_periods * self._period_in + self._context - first_in]
        out = resample(segment, self._from, self._to)
        skip = (self._emitted_periods * self._period_in - first_in) // self._period_in * self._period_out
        if ready_periods is not None:
            out = out[:, skip : skip + (ready_periods - self._emitted_periods) * self._period_out]
            self._emitted_periods = ready_periods
        else:
            assert total is not None
            out = out[:, skip : skip + total - self._emitted_periods * self._period_out]
        keep_from = max(0, self._emitted_periods * self._period_in - self._context)
        self._held = self._held[:, keep_from - self._held_from :]
        self._held_from = keep_from
        return out
