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

The default (`default_workers`): one worker per torch thread of the caller. On the 2-core machine the full
GPT-2-shaped graph took 50.9–56.4 s in six runs with two workers and 51.0–64.2 s in five with one (OpenMP threads
inside each operation; docs/transcoder-only.md): the workers cost 1–2 GiB more but keep a descheduled thread from
stalling every operation. `workers=1` gives the single-worker path. Caveat: torch's thread count is process-wide,
so two graphs built at once in two threads of one process (two explorer sessions) could leave it wrong.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """One worker per torch thread the caller was given (``OMP_NUM_THREADS`` / ``torch.set_num_threads``)."""
    return max(1, torch.get_num_threads())


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


def map_with_model_copies(fn: Callable[[object, T], R], items: Iterable[T], model, workers: int) -> list[R]:
    """[fn(model, item) for item in items] in order; with ``workers > 1`` through `ordered_map`, each call holding a
    model of its own for its duration (`model` and deep copies of it), for work that hooks the model's activations
    (TransformerLens hooks are per model, so two calls on one model would see each other's hooks). The same numbers
    as the plain loop when the caller runs one torch thread (as a case study does). Copies only on the CPU (on an
    accelerator they would take its memory for little gain), and no more than there are cores and items."""
    import copy
    import os
    import queue

    items = list(items)
    workers = min(workers, len(items), os.cpu_count() or 1)
    if workers <= 1 or not str(model.cfg.device).startswith("cpu"):
        return [fn(model, item) for item in items]
    models: queue.Queue = queue.Queue()
    models.put(model)
    for _ in range(workers - 1):
        models.put(copy.deepcopy(model))

    def call(item):
        m = models.get()
        try:
            with torch.no_grad():
                return fn(m, item)
        finally:
            models.put(m)

    return list(ordered_map(call, items, workers))
