"""The audio codec (EnCodec) of a loaded model: audio prompts into decoder tokens, and tokens
back into audio."""

from __future__ import annotations

from collections.abc import Callable
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


# Incremental decoding. The codec's decoder is not causal (its convolutions look about 4 frames
# ahead) and carries a recurrent state, so a chunk is decoded with the frames before it as left
# context and its last frames are held back until the frames after them exist. With 25 frames of
# context and 5 held back the chunks join into what one pass over everything gives, within a
# fraction of a 16-bit step, at no more codec time than one pass (the API page has the check).
LEFT_CONTEXT_FRAMES = 25
HELD_BACK_FRAMES = 5
FIRST_CHUNK_FRAMES = 25  # the first chunk comes early (0.5 s of music): time to first audio
CHUNK_FRAMES = 50  # later ones are larger: fewer codec calls


class StreamingDecoder:
    """Decodes a growing sequence of codes into audio chunk by chunk, as the frames arrive.

    Starts from the prompt's codes (whose audio is not emitted); `push` takes new frames in order
    and `finish` decodes the rest. Each chunk of new audio goes to `emit` (channels, samples),
    `total_samples` in all; `join` adjusts the first chunk given the codec's rendering of the
    prompt's last sample (see `audio.clip.smooth_join`).
    """

    def __init__(
        self,
        codec: Codec,
        prompt_codes: torch.Tensor | None,
        total_samples: int,
        emit: Callable[[torch.Tensor], None],
        join: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self._codec = codec
        self._codes = [] if prompt_codes is None else [prompt_codes]
        self._frames = 0 if prompt_codes is None else int(prompt_codes.shape[1])
        self._decoded_to = self._frames  # frames whose audio has been emitted
        self._remaining = total_samples
        self._emit = emit
        self._join = join
        self._started = False

    def push(self, frames: torch.Tensor) -> None:
        """Takes the next new frames (codebooks, n); emits a chunk when enough are known."""
        self._codes.append(frames)
        self._frames += int(frames.shape[1])
        chunk = CHUNK_FRAMES if self._started else FIRST_CHUNK_FRAMES
        if self._frames - HELD_BACK_FRAMES - self._decoded_to >= chunk:
            self._decode_until(self._frames - HELD_BACK_FRAMES)

    def finish(self) -> None:
        """Emits the audio of every frame not yet emitted."""
        if self._frames > self._decoded_to:
            self._decode_until(self._frames)

    def _decode_until(self, end: int) -> None:
        codes = torch.cat(self._codes, dim=1) if len(self._codes) > 1 else self._codes[0]
        self._codes = [codes]
        start = max(0, self._decoded_to - LEFT_CONTEXT_FRAMES)
        audio = self._codec.decode(codes[:, start : min(self._frames, end + HELD_BACK_FRAMES)])
        hop = self._codec.frame_samples
        offset = (self._decoded_to - start) * hop
        chunk = audio[:, offset : offset + (end - self._decoded_to) * hop][:, : self._remaining]
        if self._join is not None:
            chunk = self._join(chunk, audio[:, offset - 1])
            self._join = None
        self._decoded_to, self._started = end, True
        self._remaining -= int(chunk.shape[1])
        if chunk.shape[1]:
            self._emit(chunk)
