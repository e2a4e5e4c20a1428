"""musicgen-bento: Meta's MusicGen models served over HTTP with BentoML."""

import os

__version__ = "0.1.0"

# With MKL_DYNAMIC on (MKL's default), MKL picks each call's thread count from what else the process
# is doing, and a matrix product's rounding depends on how it was split: a request's tokens could
# then change with the work of other requests running beside it (a codec decoding, a file being
# levelled), which the service promises batching never does. Fixed thread counts keep the
# arithmetic of a request the same alone or batched. Set before MKL first runs; an operator's own
# value wins.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

# MKL's fastest kernels may round differently by the data's alignment in memory and the problem's
# size; its strict reproducible mode ("conditional numerical reproducibility") makes the result of
# one row independent of those. Without it, torch's CPU attention over a lone request's two rows
# rounds otherwise than over a batch, and now and then a token changes. The engine checks what
# remains at start-up (`engine/invariance.py`). Set before MKL first computes; an operator's own
# value wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
