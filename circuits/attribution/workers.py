"""Batches in parallel: one torch thread per worker instead of several threads per tensor operation.

The reverse sweeps are hundreds of independent batches, each a chain of a few hundred tensor operations of which
only the channel crossings' products are large; the rest (reads of each site's writes, the per-head position mixes,
index and copy operations) are too small to split well over threads. With torch's intra-op threads (OpenMP), two
threads make every small operation pay a fork/join — and wait for whichever thread the OS descheduled, which on a
shared machine is most of the time. Running whole batches side by side, each worker single-threaded, parallelises
everything, small operations included, and a descheduled worker delays only itself.

`ordered_map` runs a function over items in `workers` threads, each set to one torch thread (torch releases the
GIL inside its operations, so the threads run concurrently), and yields the results in the items' order — so the
caller's output is the same as with one worker, and the caller's serial work on each result (collecting edges)
overlaps the workers' sweeps. At most ``2 × workers`` results wait, which bounds memory. The caller's thread
settings are restored afterwards.

Opt-in (`reverse_edges(..., workers=N)`, `attribute(..., workers=N)`); the default is one worker with torch's own
threads inside each operation. Why: on a quiet 2-core machine the full GPT-2-shaped graph took the same time either
way (53.2–55.7 s with two workers, 53.8 s with one; docs/transcoder-only.md), two workers hold two batches' buffers
(+1–2 GiB), and torch's thread count is process-wide, so graphs built at once in two threads of one process (two
explorer sessions) could leave it wrong.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """fn(item) for every item, in order; with ``workers > 1`` computed in that many single-threaded workers.

    With one worker it is a plain loop in the caller's thread (same thread settings as the caller)."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the caller's serial work on results must not start thread teams either
    try:
        with ThreadPoolExecutor(max_workers=workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            pending: deque = deque()
            it = iter(items)
            for item in it:  # fill the window
                pending.append(pool.submit(fn, item))
                if len(pending) == 2 * workers:
                    break
            while pending:
                result = pending.popleft().result()
                for item in it:  # one more in flight for the one taken
                    pending.append(pool.submit(fn, item))
                    break
                yield result
    finally:
        torch.set_num_threads(threads)
