"""The audio codec (EnCodec) of a loaded model: audio prompts into decoder tokens, and tokens
back into audio."""

from __future__ import annotations

from typing import Any

import torch


class Codec:
    """Encodes audio prompts and decodes generated codes, as transformers' `generate()` does."""

    def __init__(self, model: Any, device: str, dtype: torch.dtype) -> None:
        self._model = model
        self._device = device
        self._dtype = dtype
        self.frame_samples = round(model.config.audio_encoder.sampling_rate / model.config.audio_encoder.frame_rate)

    def encode(self, prompt: torch.Tensor) -> torch.Tensor:
        """The prompt's codec tokens as decoder input ids, shaped (codebooks, frames).

        Stereo models encode each channel separately and interleave the codebooks
        (left 0, right 0, left 1, ...), as transformers does for its own audio prompts.
        """
        encoder = self._model.audio_encoder
        values = prompt.to(self._device, self._dtype).unsqueeze(0)
        per_channel = [encoder.encode(values[:, c : c + 1, :]).audio_codes[0] for c in range(values.shape[1])]
        # (batch, codebooks * channels, frames), channels alternating within each codebook
        codes = per_channel[0] if len(per_channel) == 1 else torch.stack(per_channel, dim=2).flatten(1, 2)
        return codes.reshape(-1, codes.shape[-1]).cpu()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Audio (channels, samples) on the CPU from codes (codebooks, frames)."""
        decoder = self._model.audio_encoder
        batch = codes.to(self._device)[None, None]  # (frames of the codec = 1, batch = 1, codebooks, steps)
        if self._model.decoder.config.audio_channels == 1:
            audio = decoder.decode(batch, audio_scales=[None]).audio_values
        else:
            left = decoder.decode(batch[:, :, ::2, :], audio_scales=[None]).audio_values
            right = decoder.decode(batch[:, :, 1::2, :], audio_scales=[None]).audio_values
            audio = torch.cat([left, right], dim=1)
        return audio[0].to(torch.float32).cpu()  # type: ignore[no-any-return]
