"""Batch attribution over many prompts: in-process, in parallel worker processes, or on a Ray cluster.

Work is described by a picklable `StudySpec` (model, dictionary set, study name and options, n, seed): every worker
rebuilds the same replacement model, dataset and group means from it once (deterministically), then handles chunks
of prompt indices. Results come back tagged with their prompt index and are put in prompt order, so the outcome does
not depend on the number of workers or on which worker ran what. Each worker uses one torch thread, which also makes
the floating-point results identical however the work is split.

* ``workers=1``: in the calling process (tests, small runs);
* ``workers=N``: a local pool of N processes (``spawn``, so no torch state is forked);
* ``ray_address="ray://host:10001"`` (or ``"auto"``): the same chunk function runs as Ray tasks on a cluster; every
  node needs this package and the model files. Ray is optional and imported only then.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from circuits.errors import CircuitsError


@dataclass(frozen=True)
class StudySpec:
    study: str
    model: str = "organism"
    dicts: str = "organism"
    n: int = 200
    seed: int = 0
    options: tuple[tuple[str, object], ...] = ()
    ig_steps: int = 4


@dataclass
class WorkerState:
    rm: object
    study: object
    prepared: list
    means: dict = field(default_factory=dict)


_STATES: dict[StudySpec, WorkerState] = {}


def build_state(spec: StudySpec, rm=None, study=None) -> WorkerState:
    """The replacement model, study, prepared prompts and group means for `spec` (cached per process).

    `rm` and `study` may be given directly (in-process runs, e.g. tests with tiny models); otherwise they are
    rebuilt from the spec's names."""
    cached = _STATES.get(spec)
    if cached is not None and (rm is None or cached.rm is rm) and (study is None or cached.study is study):
        return cached
    from circuits.studies import get_study
    from circuits.studies.base import group_means, prepare

    if rm is None:
        from circuits import load_dictionaries, load_model
        from circuits.replacement import ReplacementModel

        model, _ = load_model(spec.model)
        rm = ReplacementModel(model, load_dictionaries(spec.dicts, model), name=spec.model)
    study = study if study is not None else get_study(spec.study, **dict(spec.options))
    prepared = prepare(rm, study, study.prompts(rm.model, spec.n, spec.seed))
    state = WorkerState(rm, study, prepared, group_means(rm, prepared))
    _STATES.clear()  # one study per process at a time
    _STATES[spec] = state
    return state


def run_chunk(spec: StudySpec, task: str, indices: list[int], payload: dict, rm=None, study=None) -> list[dict]:
    """Run `task` ("analyse" or "evaluate") on the given prompt indices; the unit of parallel work."""
    import torch

    from circuits.studies.analysis import analyse_prompt, evaluate_prompt

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        state = build_state(spec, rm, study)
        out = []
        for i in indices:
            pp = state.prepared[i]
            ablation = state.means[pp.group]
            if task == "analyse":
                out.append(analyse_prompt(state.rm, pp, ablation, spec.ig_steps))
            elif task == "evaluate":
                out.append(evaluate_prompt(state.rm, pp, ablation, payload["curve"], payload["circuit"],
                                           state.study.checks() if payload.get("checks", True) else [],
                                           payload["context"]))
            else:
                raise CircuitsError(f"unknown task {task!r}")
        return out
    finally:
        torch.set_num_threads(threads)


def chunks(n: int, size: int) -> Iterator[list[int]]:
    for start in range(0, n, size):
        yield list(range(start, min(n, start + size)))


def map_prompts(spec: StudySpec, task: str, payload: dict, *, workers: int = 1, ray_address: str | None = None,
                rm=None, study=None, chunk_size: int = 8, progress: bool = False, desc: str = "") -> list[dict]:
    """`run_chunk` over all prompts of `spec`, in prompt order."""
    from tqdm.auto import tqdm

    parts = list(chunks(spec.n, chunk_size))
    bar = tqdm(total=spec.n, desc=desc or task, disable=not progress, unit="prompt")
    results: list[dict] = []
    if ray_address:
        try:
            import ray
        except ImportError as e:
            raise CircuitsError("a Ray address was given but the 'ray' package is not installed; "
                                "pip install 'ray[default]' on every node, or run without --ray-address") from e
        ray.init(address=ray_address, ignore_reinit_error=True)
        remote = ray.remote(run_chunk)
        refs = [remote.remote(spec, task, part, payload) for part in parts]
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(len(parts[refs.index(done[0])]))
        for ref in refs:
            results += ray.get(ref)
    elif workers <= 1 or study is not None:
        for part in parts:
            results += run_chunk(spec, task, part, payload, rm=rm, study=study)
            bar.update(len(part))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        workers = min(workers, len(parts), os.cpu_count() or 1) or 1
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(run_chunk, spec, task, part, payload) for part in parts]
            for fut, part in zip(futures, parts, strict=True):
                results += fut.result()
                bar.update(len(part))
    bar.close()
    results.sort(key=lambda r: r["index"])
    return results
