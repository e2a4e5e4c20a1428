"""The line between a request's caller, blocked in `DecodeEngine.decode`, and the engine's thread:
steps counted, streamed frames handed over, the request's end (codes or an error), and the
caller's cancel going the other way."""

from __future__ import annotations

import threading

import torch

from .requests import FramesFn, StepFn

# How often a waiting caller reports its request's steps (and so how soon it sees a cancel).
# Waking every caller at every step would have each request's thread compete with the engine's for
# the interpreter lock once per step, slowing every step of the batch.
REPORT_INTERVAL_S = 0.05


class RequestChannel:
    """One request's hand-off: written by the engine's thread, read by its caller's."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._steps = 0
        self._frames: list[torch.Tensor] = []
        self._done = False
        self._codes: torch.Tensor | None = None
        self._error: BaseException | None = None
        # Set by the caller; the engine reads it between steps (a plain flag: no lock needed).
        self.canceled = False

    # -- the engine's side --------------------------------------------------------------------------

    def stepped(self) -> None:
        """Counts one decoding step; the caller reads the count at its next report, unwoken."""
        self._steps += 1

    def hand_over(self, frames: torch.Tensor) -> None:
        """Queues completed frames for the caller's next report."""
        with self._cv:
            self._frames.append(frames)

    def finish(self, codes: torch.Tensor | None = None, error: BaseException | None = None) -> None:
        """Ends the request: its codes, or the error its caller raises (neither: it was canceled)."""
        with self._cv:
            self._codes, self._error, self._done = codes, error, True
            self._cv.notify_all()

    # -- the caller's side --------------------------------------------------------------------------

    def follow(self, on_step: StepFn | None, on_frames: FramesFn | None) -> torch.Tensor:
        """Waits for the end, reporting each step to `on_step` and handed-over frames to `on_frames`
        on the calling thread (every `REPORT_INTERVAL_S` and at the end); returns the codes.

        Anything the callbacks raise cancels the request and is raised here, as is the request's
        error."""
        try:
            codes = self._follow(on_step, on_frames)
        except BaseException:
            self.canceled = True
            raise
        if self._error is not None:
            raise self._error
        if codes is None:
            raise RuntimeError("the engine ended a request that was not canceled without its codes")
        return codes

    def _follow(self, on_step: StepFn | None, on_frames: FramesFn | None) -> torch.Tensor | None:
        reported = 0
        while True:
            with self._cv:
                if not self._done:
                    self._cv.wait(REPORT_INTERVAL_S)
                steps, done = self._steps, self._done
                frames, self._frames = self._frames, []
            if on_step is not None:
                for _ in range(reported, steps):
                    on_step()
            reported = steps
            if on_frames is not None:
                for handed in frames:
                    on_frames(handed)
            if done:
                return self._codes
