"""Long generation in windows: how a request longer than the model's window is split, and which
part of a melody conditions each window."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Window:
    """One pass of the model: how many frames of prompt it takes and how many it adds."""

    prompt_frames: int
    new_frames: int


def plan_windows(prompt_frames: int, new_frames: int, window_frames: int, stride_frames: int) -> list[Window]:
    """Splits a generation into windows no longer than `window_frames` (prompt included).

    The first window takes the caller's prompt; each later one takes the last
    `window_frames - stride_frames` frames of what exists so far and adds up to
    `stride_frames` new ones.
    """
    if not 0 <= prompt_frames < window_frames:
        raise ValueError(f"the prompt ({prompt_frames} frames) must be shorter than the window ({window_frames})")
    if not 0 < stride_frames < window_frames:
        raise ValueError("the stride must be positive and shorter than the window")
    first = min(new_frames, window_frames - prompt_frames)
    windows = [Window(prompt_frames, first)]
    remaining = new_frames - first
    while remaining > 0:
        step = min(remaining, stride_frames)
        windows.append(Window(window_frames - stride_frames, step))
        remaining -= step
    return windows


def melody_of_window(melody: torch.Tensor, start_frame: int, window_frames: int, frame_samples: int) -> torch.Tensor:
    """The melody that conditions a window of a long generation (one of several windows), as
    audiocraft's `MusicGen._generate_tokens` gives it: a whole window's worth (`window_frames`,
    however long the window itself is) from the window's place in time (`start_frame`, its first
    frame, counted from the start of the caller's prompt), looped when the melody is shorter.
    A generation that fits one window takes the melody as it is."""
    start = start_frame * frame_samples
    positions = torch.arange(start, start + window_frames * frame_samples) % melody.shape[1]
    return melody[:, positions]
