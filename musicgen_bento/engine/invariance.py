"""Whether a request's tokens come out the same batched as alone on this machine's kernels, and the
fewest rows a decoding step must compute for that to hold, checked at start-up on the decoder's own
weights and attention.

Math libraries choose their kernels by problem size, and kernels round differently: on an AVX-512
CPU, MKL computes a float32 product of 2 rows with another kernel than one of 4 or more, and torch's
CPU attention over 2 rows differs from attention over 4 unless MKL runs in its strict reproducible
mode (`MKL_CBWR`, set in the package's `__init__`). A last-bit difference in a logit is enough to
change a token now and then, so a request alone (2 rows: conditional and unconditional) would not
give the codes it gives in a batch. Which sizes share a kernel differs from CPU to CPU and library
to library, so it is measured here rather than assumed: a step computes at least `min_rows` rows
(the extra ones are free slots, whose results are ignored), the smallest count from which every
product gives a row the same values whatever the row count and the row's place in the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

logger = logging.getLogger("musicgen_bento")

# A product of the step, computed for `rows` rows that all hold the same input pair (one request's
# two rows, repeated): the outputs, first dimension `rows`. Kernels do not look at the values, so
# repeating one pair checks every place in the batch at once.
Probe = Callable[[int], torch.Tensor]


@dataclass(frozen=True)
class BatchInvariance:
    """The rows a step computes at least, and whether that makes every row independent of the batch."""

    min_rows: int
    holds: bool
    reason: str


def find_min_rows(probes: Sequence[tuple[str, Probe]], max_rows: int) -> BatchInvariance:
    """The smallest power of two of rows (2 to `max_rows`, which is also tried) from which every
    probe gives each pair of rows what it gives the first pair at that count, for every even row
    count up to `max_rows`. When none does, the step is not padded (padding would only cost) and
    the result says which product varies."""
    # Every probe runs once per row count; each candidate count is then judged on those outputs.
    with torch.inference_mode():
        outputs = [(name, {rows: probe(rows) for rows in range(2, max_rows + 1, 2)}) for name, probe in probes]
    candidates = sorted({*(1 << power for power in range(1, max_rows.bit_length())), max_rows})
    varying = ""
    for floor in candidates:
        varying = _first_varying(outputs, floor)
        if not varying:
            how = "" if floor == 2 else f" once each step computes at least {floor} rows (free slots alongside)"
            reason = (
                "checked at start-up: a request's rows get the same values alone as in a batch "
                f"of up to {max_rows} rows{how}"
            )
            logger.info("decoding engine: batch invariance %s", reason)
            return BatchInvariance(floor, True, reason)
    reason = f"not batch-invariant on this machine: {varying}; a request's tokens may differ batched and alone"
    logger.warning("decoding engine: %s", reason)
    return BatchInvariance(2, False, reason)


def _first_varying(outputs: list[tuple[str, dict[int, torch.Tensor]]], floor: int) -> str:
    """The first probe whose pairs differ, from `floor` rows on, from its first pair at `floor`
    rows, described; "" if none."""
    for name, by_rows in outputs:
        reference = by_rows[floor][:2]
        for rows, output in by_rows.items():
            if rows >= floor and not bool((output.reshape(rows // 2, 2, *reference.shape[1:]) == reference).all()):
                return f"{name} differs at {rows} rows from {floor}"
    return ""
