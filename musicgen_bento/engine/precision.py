"""A precision chosen for something the engine holds (the weights, the attention caches), with
the reason it was chosen, as `/health` and the start-up log show them."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    """A dtype and why it was chosen: the setting, or what was measured on this device
    (`generation.device.pick_precision`, `kv_cache.choose_cache_precision`)."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        """float32, float16 or bfloat16."""
        return str(self.dtype).removeprefix("torch.")
