"""Which threads run torch's parallel CPU kernels: the decoding engine's, and no other once it runs.

torch's CPU thread pool on Linux is GNU OpenMP, which keeps a team of worker threads for every
thread that ever ran a parallel kernel, for as long as that thread lives. Once those workers
outnumber the cores, GNU OpenMP stops letting them spin between kernels: each kernel then wakes a
sleeping worker first, and that wake-up costs more than many of a decoding step's small kernels
take (`bench/bench_cpu_threads.py` measures a step with and without another team alive). A
service's request threads (the codec, the text encoder) live on between requests, each with a team.

So on a CPU the engine's thread, started with the engine, claims the cores for itself, and every
thread that starts computing after it computes on one core (it runs no parallel kernel, so it
keeps no team): the codec and the text encoder of a request run single-threaded beside the engine. Threads that were
already computing keep their count (torch reads the process's default once per thread).
"""

from __future__ import annotations

import threading

import torch

# torch's thread count as the process started (all cores, or OMP_NUM_THREADS): read at import,
# before any engine lowered the default.
PROCESS_THREADS = torch.get_num_threads()


def claim_cores() -> int:
    """Makes the calling thread compute on `PROCESS_THREADS` cores and every thread that starts
    computing later on one; returns the calling thread's count."""
    torch.get_num_threads()  # settles this thread's own count first, so the default set below cannot reach it
    torch.set_num_threads(PROCESS_THREADS)
    # torch sets the default for new threads only together with the calling thread's count: a
    # helper thread lowers the default and takes the lowered count with it.
    lowering = threading.Thread(target=torch.set_num_threads, args=(1,), name="musicgen-threads-default")
    lowering.start()
    lowering.join()
    return torch.get_num_threads()
