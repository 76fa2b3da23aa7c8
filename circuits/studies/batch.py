"""Batch attribution over many prompts: in-process, in parallel worker processes, or on a Ray cluster.

Work is described by a picklable `StudySpec` (model, dictionary set, study name and options, n, seed): every worker
rebuilds the same replacement model, prompt sets and reference means from it once (deterministically), then handles
chunks of prompt indices of one set. Results come back tagged with their prompt index and are put in prompt order, so the outcome does
not depend on the number of workers or on which worker ran what. Each worker uses one torch thread, which also makes
the floating-point results identical however the work is split.

* ``workers=1``: in the calling process (tests, small runs);
* ``workers=N``: a local pool of N processes (``spawn``, so no torch state is forked). ``spawn`` starts each worker
  by re-importing the caller's main script; a script that starts the study at its top level, without an
  ``if __name__ == "__main__":`` guard, would start it again in every worker. `main_module_guarded` detects that
  case before any worker starts and the work then runs in the calling process, with one warning (and a worker
  that does start the study while it is bootstrapping stops at once with a `CircuitsError` saying so). The first
  worker error ends the whole pool at once and is raised in the caller;
* ``ray_address="ray://host:10001"`` (or ``"auto"``): the same chunk function runs as Ray tasks on a cluster; every
  node needs this package and the model files. Ray is optional and imported only then.
"""

from __future__ import annotations

import ast
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from circuits.errors import CircuitsError


@dataclass(frozen=True)
class StudySpec:
    study: str
    model: str = "organism"
    dicts: str = "organism"
    n: int = 200  # evaluation prompts (the selection and reference sets are sized from it: Study.set_sizes)
    seed: int = 0
    options: tuple[tuple[str, object], ...] = ()
    ig_steps: int = 4
    device: str = "cpu"  # where each worker loads the model (the dictionaries follow it)

    def __post_init__(self):
        """The same rules as `circuits study` (checked before any model loads)."""
        for name in ("n", "seed", "ig_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise CircuitsError(f"StudySpec.{name}: {value!r} is not a whole number")
        if self.n < 4:
            raise CircuitsError(f"StudySpec.n = {self.n}: at least 4 evaluation prompts (mean ablation needs several "
                                "prompts per group)")
        if self.seed < 0 or self.ig_steps < 0:
            raise CircuitsError(f"StudySpec: seed and ig_steps must be 0 or more (got {self.seed}, {self.ig_steps})")


@dataclass
class WorkerState:
    rm: object
    study: object
    sets: dict  # "selection", "evaluation", "reference" (and "test", "test_reference"): list[PreparedPrompt]
    means: dict = field(default_factory=dict)  # "main" (selection + evaluation), "test": ReferenceMeans

    @property
    def prepared(self) -> list:
        """The evaluation set (every reported number is measured on it)."""
        return self.sets["evaluation"]

    def ablation(self, set_name: str, pp):
        return self.means["test" if set_name == "test" else "main"].for_prompt(pp)


_STATES: dict[StudySpec, WorkerState] = {}


def build_state(spec: StudySpec, rm=None, study=None) -> WorkerState:
    """The replacement model, study, prepared prompt sets and reference means for `spec` (cached per process).

    `rm` and `study` may be given directly (in-process runs, e.g. tests with tiny models); otherwise they are
    rebuilt from the spec's names."""
    cached = _STATES.get(spec)
    if cached is not None and (rm is None or cached.rm is rm) and (study is None or cached.study is study):
        return cached
    from circuits.studies import get_study
    from circuits.studies.base import prepare, reference_means

    if rm is None:
        from circuits import load_dictionaries, load_model
        from circuits.replacement import ReplacementModel

        model, _ = load_model(spec.model, spec.device)
        rm = ReplacementModel(model, load_dictionaries(spec.dicts, model), name=spec.model)
    study = study if study is not None else get_study(spec.study, **dict(spec.options))
    raw = dict(study.prompt_sets(rm.model, spec.n, spec.seed))
    raw.update(study.test_sets(rm.model, spec.n, spec.seed) or {})
    sets = {name: prepare(rm, study, prompts) for name, prompts in raw.items()}
    means = {"main": reference_means(rm, sets["reference"], sets["selection"] + sets["evaluation"])}
    if "test" in sets:
        means["test"] = reference_means(rm, sets["test_reference"], sets["test"])
    state = WorkerState(rm, study, sets, means)
    _STATES.clear()  # one study per process at a time
    _STATES[spec] = state
    return state


def run_chunk(spec: StudySpec, task: str, indices: list[int], payload: dict, rm=None, study=None) -> list[dict]:
    """Run `task` ("analyse" or "evaluate") on the given prompt indices of the set `payload["set"]`; the unit of
    parallel work."""
    import torch

    from circuits.studies.analysis import analyse_prompt, evaluate_prompt

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        state = build_state(spec, rm, study)
        set_name = payload["set"]
        out = []
        for i in indices:
            pp = state.sets[set_name][i]
            ablation = state.ablation(set_name, pp)
            if task == "analyse":
                out.append(analyse_prompt(state.rm, pp, ablation, spec.ig_steps))
            elif task == "evaluate":
                out.append(evaluate_prompt(state.rm, pp, ablation, payload["curve"], payload["circuit"],
                                           state.study.checks() if payload.get("checks", True) else [],
                                           payload["context"], edges=i < payload.get("edge_prompts", 0)))
            else:
                raise CircuitsError(f"unknown task {task!r}")
        return out
    finally:
        torch.set_num_threads(threads)


def chunks(n: int, size: int) -> Iterator[list[int]]:
    for start in range(0, n, size):
        yield list(range(start, min(n, start + size)))


GUARD_HINT = ('put the code that runs the study under `if __name__ == "__main__":` (worker processes re-import the '
              'main script), or pass workers=1')


def _is_main_guard(stmt: ast.stmt) -> bool:
    """`if __name__ == "__main__":` (either operand order, possibly inside a larger condition)."""
    if not isinstance(stmt, ast.If):
        return False
    for node in ast.walk(stmt.test):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq):
            sides = [node.left, *node.comparators]
            names = {s.id for s in sides if isinstance(s, ast.Name)}
            consts = {s.value for s in sides if isinstance(s, ast.Constant)}
            if "__name__" in names and "__main__" in consts:
                return True
    return False


def main_module_guarded() -> tuple[bool, str | None]:
    """Whether worker processes started now (``spawn``) can import the main script without re-running this call.

    ``spawn`` runs the main module's top level again in every worker (as ``__mp_main__``). That is harmless when the
    statement of the main module running now — the outermost frame of the main module on the stack — is an
    ``if __name__ == "__main__":`` block, and when there is no main script (interactive sessions, notebooks,
    ``python -c``). Returns (guarded, "FILE:LINE" of the unguarded statement)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path:
        return True, None
    frame, top = sys._getframe(), None
    while frame is not None:
        if frame.f_globals is main.__dict__ and frame.f_code.co_name == "<module>":
            top = frame
        frame = frame.f_back
    if top is None:  # called from elsewhere (a thread, a callback): the main module's top level is not running it
        return True, None
    try:
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError, ValueError):
        return True, None  # no readable source: cannot tell; a worker that re-runs the study stops at once (below)
    line = top.f_lineno
    for stmt in tree.body:
        if stmt.lineno <= line <= (stmt.end_lineno or stmt.lineno):
            return (True, None) if _is_main_guard(stmt) else (False, f"{path}:{line}")
    return True, None


def check_not_bootstrapping() -> None:
    """Raise at once in a worker process that is importing the caller's unguarded main script (it would start the
    whole study again instead of waiting for work)."""
    import multiprocessing as mp

    if mp.parent_process() is not None and getattr(mp.current_process(), "_inheriting", False):
        raise CircuitsError("a study was started while a worker process was importing the main script: "
                            + GUARD_HINT)


_WARNED: set[str] = set()


def _warn_unguarded(where: str) -> None:
    if where in _WARNED:
        return
    _WARNED.add(where)
    filename, _, lineno = where.rpartition(":")
    warnings.warn_explicit(f"circuits: {filename} starts the study at its top level, without an `if __name__ == "
                           f"\"__main__\":` guard, so worker processes cannot be used: running in this process "
                           f"instead", RuntimeWarning, filename, int(lineno), module="__main__")


class WorkerPool:
    """Spawned worker processes kept for every pass of one study run (graphs, circuits, test set): a worker builds
    the study's state (model, dictionaries, prompt sets, reference means; `build_state` caches it per process) once,
    not once per pass. Processes start on demand, up to `workers`. Use as a context manager; `close` ends them.

    The first exception raised by a call (or a worker that dies) ends the pool at once — pending calls are
    cancelled and running workers terminated — and is raised by `run`, instead of waiting for the calls before it."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, fn: Callable, calls: list[tuple], on_done: Callable[[int], None] | None = None) -> list:
        """`fn(*args)` for every args tuple of `calls` on the pool's processes; results in call order."""
        import multiprocessing as mp
        from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"))
        ok = False
        try:
            futures = [self._pool.submit(fn, *args) for args in calls]
            index = {f: i for i, f in enumerate(futures)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    err = fut.exception()
                    if isinstance(err, BrokenProcessPool):
                        raise CircuitsError(f"a study worker process died ({err}); its own error output is above. "
                                            f"If the study was started from a script: {GUARD_HINT}") from err
                    if err is not None:
                        raise err
                    if on_done is not None:
                        on_done(index[fut])
            results = [f.result() for f in futures]
            ok = True
            return results
        finally:
            if not ok:
                self._terminate()

    def _terminate(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:  # do not wait for the chunks still running
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout=10)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


def run_pool(fn: Callable, calls: list[tuple], workers: int, on_done: Callable[[int], None] | None = None) -> list:
    """`fn(*args)` for every args tuple of `calls` in a new pool of `workers` spawned processes (`WorkerPool`,
    ended afterwards); results in call order."""
    with WorkerPool(workers) as pool:
        return pool.run(fn, calls, on_done)


def map_prompts(spec: StudySpec, task: str, payload: dict, *, n: int, workers: int = 1,
                ray_address: str | None = None, rm=None, study=None, chunk_size: int = 8, progress: bool = False,
                desc: str = "", pool: WorkerPool | None = None) -> list[dict]:
    """`run_chunk` over the `n` prompts of the set `payload["set"]`, in prompt order (with ``workers > 1`` on
    `pool`'s processes when given, so that the passes of one study share them; else on a pool of its own)."""
    from tqdm.auto import tqdm

    check_not_bootstrapping()
    parts = list(chunks(n, chunk_size))
    if workers > 1 and not ray_address and study is None:
        guarded, where = main_module_guarded()
        if not guarded:
            _warn_unguarded(where)
            workers = 1
    bar = tqdm(total=n, desc=desc or task, disable=not progress, unit="prompt")
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
        calls = [(spec, task, part, payload) for part in parts]
        done = lambda i: bar.update(len(parts[i]))  # noqa: E731
        if pool is not None:
            chunks_done = pool.run(run_chunk, calls, on_done=done)
        else:
            chunks_done = run_pool(run_chunk, calls, min(workers, len(parts), os.cpu_count() or 1) or 1, on_done=done)
        for chunk in chunks_done:
            results += chunk
    bar.close()
    results.sort(key=lambda r: r["index"])
    return results


def connect_ray(address: str) -> None:
    """Connect this process to the Ray cluster at `address` ("HOST:PORT" of a head started with ``ray start --head``,
    ``ray://HOST:10001`` for Ray Client, or ``auto``), or raise `CircuitsError` saying what to do. The per-prompt
    tasks (`circuits.studies.batch.map_prompts`) then run on it; see docs/ray.md. A process already connected to
    Ray keeps its connection (call ``ray.shutdown()`` first to change clusters)."""
    try:
        import ray
    except ImportError:
        raise CircuitsError("a Ray address was given but the 'ray' package is not installed; pip install "
                            "'circuits[interop]' (or 'ray') on every node, or run without --ray-address") from None
    if ray.is_initialized():
        return
    _check_reachable(address)
    try:
        ray.init(address=address)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CircuitsError(f"cannot connect to the Ray cluster at {address!r} ({reason}); start one with `ray start "
                            "--head` on the head node, or check --ray-address") from None


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A TCP connect to HOST:PORT of `address` (``ray://`` stripped; ``auto`` skipped): ``ray.init`` retries an
    unreachable address for many minutes (more than 10 measured), so a wrong address is caught here in seconds."""
    import socket

    target = address.removeprefix("ray://")
    if address == "auto" or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        raise CircuitsError(f"cannot connect to the Ray cluster at {address!r} ({e}); start one with `ray start "
                            "--head` on the head node, or check --ray-address") from None
