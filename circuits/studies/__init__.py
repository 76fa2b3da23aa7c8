"""Scripted case studies: IOI, induction and two-hop recall, on one framework (`circuits.studies.base`).

``circuits study ioi --n 200`` runs a study and writes a report folder; in Python::

    from circuits.studies import StudySpec, run_study, write_report

    if __name__ == "__main__":  # in a script: worker processes re-import it (see `circuits.studies.batch`)
        result = run_study(StudySpec("ioi", n=200), workers=2)
        write_report(result, "reports/ioi")

A new study is one short module: a `Study` subclass (prompt pairs, roles, checks) registered in `STUDIES`.
"""

from __future__ import annotations

from circuits.errors import CircuitsError
from circuits.studies.base import Study, StudyPrompt
from circuits.studies.batch import StudySpec


def _registry() -> dict:
    from circuits.studies.induction import InductionStudy
    from circuits.studies.ioi import IOIStudy
    from circuits.studies.two_hop import TwoHopStudy

    return {"ioi": IOIStudy, "induction": InductionStudy, "two_hop": TwoHopStudy}


STUDY_NAMES = ("ioi", "induction", "two_hop")


def get_study(name: str, **options) -> Study:
    registry = _registry()
    if name not in registry:
        raise CircuitsError(f"unknown study {name!r}; choose one of {', '.join(registry)}")
    import inspect

    params = inspect.signature(registry[name].__init__).parameters.values()
    known = [p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in options if k not in known]
    if unknown:
        raise CircuitsError(f"study {name!r}: unknown option {', '.join(map(repr, unknown))}; "
                            + (f"its options: {', '.join(known)}" if known else "it takes no options"))
    try:
        return registry[name](**options)
    except (TypeError, ValueError) as e:
        raise CircuitsError(f"study {name!r}: bad option ({e})") from e


def run_study(*args, **kwargs):
    from circuits.studies.runner import run_study as _run

    return _run(*args, **kwargs)


def write_report(*args, **kwargs):
    from circuits.studies.report import write_report as _write

    return _write(*args, **kwargs)


__all__ = ["STUDY_NAMES", "Study", "StudyPrompt", "StudySpec", "get_study", "run_study", "write_report"]
