"""MusicGen's delay pattern as one object with its two operations: `build` delays codebook k by
k steps (k // 2 per channel for stereo) before decoding, `revert` undoes it afterwards."""

from __future__ import annotations

from typing import Any

import torch


def delay_steps(model: Any) -> int:
    """How many steps after a frame's first codebook its last one is decoded: codebook k is delayed
    by k steps (k // 2 per channel for stereo)."""
    config = model.decoder.config
    return int(config.num_codebooks) // int(config.audio_channels) - 1


class DelayPattern:
    """The delay pattern of one model's decoder (audiocraft's pattern provider, in transformers' terms)."""

    def __init__(self, model: Any, start_token: int) -> None:
        config = model.decoder.config
        self._decoder = model.decoder
        self.start_token = start_token
        self.codebooks = int(config.num_codebooks)
        self.audio_channels = int(config.audio_channels)
        # The last codebook of the last frame arrives this many steps after the first.
        self.delay_steps = delay_steps(model)

    def length(self, frames: int) -> int:
        """Decoding positions for `frames` frames: the start token, the frames and the delay."""
        return 1 + frames + self.delay_steps

    def build(
        self, prompt_codes: torch.Tensor | None, max_length: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The known tokens (start token, then the prompt, delayed) and the pattern, as transformers
        builds them: ids (codebooks, known), pattern (codebooks, max_length) where -1 marks a
        position the model chooses and any other value a token it is given."""
        start = torch.full((self.codebooks, 1), self.start_token, dtype=torch.long, device=device)
        ids = start if prompt_codes is None else torch.cat([start, prompt_codes.to(device)], dim=1)
        ids, pattern = self._decoder.build_delay_pattern_mask(ids, self.start_token, max_length=max_length)
        return ids, pattern

    def revert(self, codes: torch.Tensor, max_length: int) -> torch.Tensor:
        """Codes (codebooks, max_length) in decoding order back to frames (codebooks, frames)."""
        frames = max_length - 1 - self.delay_steps
        rows = [
            codes[k, 1 + k // self.audio_channels : 1 + k // self.audio_channels + frames]
            for k in range(self.codebooks)
        ]
        return torch.stack(rows)

    @staticmethod
    def force(tokens: torch.Tensor, patterns: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Chosen tokens (slots, codebooks), with the pattern's given tokens where it has them;
        `positions` (slots, codebooks, 1) is where each slot's tokens go."""
        forced = patterns.gather(2, positions).squeeze(2)
        return torch.where(forced == -1, tokens, forced)
