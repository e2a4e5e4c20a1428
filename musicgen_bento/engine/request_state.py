"""One request's decoding progress as the engine's thread keeps it: where it stands in its window,
what its prefill was (so that a twin can share it), and how much of it was streamed. The
scheduler reads it through `scheduler.Scheduled`; the runner moves it on."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .channel import RequestChannel
from .requests import DecodeRequest


@dataclass(eq=False)
class RequestState:
    """A request from submission to its end; rows 2i and 2i+1 of the batch while it holds slot i."""

    request: DecodeRequest
    order: tuple[int, ...]
    max_length: int  # 1 (start token) + prompt frames + new frames + delay steps
    prefix: int  # melody models: the conditioning prefix's length in the cache
    cross_positions: int  # text models: the conditioning's length
    channel: RequestChannel = field(default_factory=RequestChannel)
    next_token: int = 0  # index of the token the next step produces (0: not prefilled yet)
    error: BaseException | None = None  # set when its prefill or a step failed
    prefill_ids: torch.Tensor | None = None  # the start token and the prompt, as prefilled
    prefill_logits: torch.Tensor | None = None  # the prefill's last logits, (2, codebooks, vocab) in float32
    published: int = 0  # streaming: frames handed over so far (the prompt's count as handed)

    @property
    def known(self) -> int:
        """Tokens known before decoding: the start token and the prompt's frames."""
        return 1 + self.request.prompt_frames

    @property
    def leaving(self) -> bool:
        return self.error is not None or self.channel.canceled or self.next_token >= self.max_length

    @property
    def positions(self) -> int:
        # Before its prefill it already counts for what the next step reads of it once prefilled:
        # the prefill decides the first token, so the step writes the one after the known tokens.
        return self.prefix + max(self.next_token, self.known + 1)

    @property
    def used(self) -> int:
        """Cache positions holding its keys and values (what a move to another slot copies)."""
        return self.prefix + self.next_token
