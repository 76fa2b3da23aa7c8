"""Diagnostic: which words of an IOI prompt make the replacement score fall (issue 19's held-out gap).

    python benchmarks/ioi_word_swap.py [--dicts organism|FOLDER ...] [--n 32]

Every set scores lower on IOI prompts from held-out templates than from training templates, and the gap grew with
each IOI-specific lever. The held-out templates use words that no training IOI sentence uses
(`circuits.organism.templates.ioi_heldout_only_words`: "Once", "mailed", ...). This script takes one training
template and swaps words in it, one condition at a time:

* ``T0``: training template 0 as it is;
* ``C2``: two words swapped for words that training IOI sentences do use (the control: two edits, nothing new);
* ``V`` / ``O``: the verb / the opening word swapped for a held-out-only word;
* ``OV``: both.

None of the conditions is a held-out template. Each condition's prompts are drawn from the same random stream as
the IOI study's held-out-template prompts (`IOIStudy("heldout", template_texts=(template,)).prompts`: the
template list replaced by the one condition's template), so every condition has the same names, places and objects: the paired difference to
``T0`` (95% bootstrap interval over prompts) isolates the swapped words. For each set and condition it prints the
replacement score of the IOI contrast graphs (issue 19's convention) and the largest error-node shares
(`benchmarks/clt.py`'s `error_shares`: where the missing part sits). With more than one set it then prints each
set's paired difference to the first, condition by condition (the same prompts for every set).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CONDITIONS = {
    "T0": "When {A} and {B} went to the {place}, {S} gave a {object} to",
    "C2": "Yesterday {A} and {B} went to the {place}, {S} sent a {object} to",
    "V": "When {A} and {B} went to the {place}, {S} mailed a {object} to",
    "O": "Once {A} and {B} went to the {place}, {S} gave a {object} to",
    "OV": "Once {A} and {B} went to the {place}, {S} mailed a {object} to",
}


def check_conditions() -> None:
    """The conditions are what the docstring says: T0 is a training template, none is a held-out template, C2 uses
    only words of training IOI sentences, and V / O / OV each bring the held-out-only words named."""
    from circuits.organism import templates as T

    assert CONDITIONS["T0"] == T.IOI_TRAIN_TEMPLATES[0]
    assert not set(CONDITIONS.values()) & set(T.IOI_HELDOUT_TEMPLATES)
    train_words, only = T.ioi_training_words(), T.ioi_heldout_only_words()
    new = {c: T.words_of((t,)) - train_words for c, t in CONDITIONS.items()}
    assert new == {"T0": set(), "C2": set(), "V": {"mailed"}, "O": {"Once"}, "OV": {"Once", "mailed"}}, new
    assert all(w in only for words in new.values() for w in words)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dicts", nargs="+", default=["organism"])
    ap.add_argument("--n", type=int, default=32, help="prompts per condition (half ABBA, half BABA)")
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    args = ap.parse_args()
    if args.n < 2:
        ap.error("--n must be at least 2")
    check_conditions()

    from clt import error_shares, paired_difference, score_variants

    from circuits.cli.runtime import configure_threads
    from circuits.dictionaries import load_dictionaries
    from circuits.model import load_model
    from circuits.replacement import ReplacementModel
    from circuits.studies.ioi import IOIStudy

    configure_threads()  # $CIRCUITS_THREADS, else $OMP_NUM_THREADS, else 1 (docs/cli.md)
    model, _ = load_model("organism")
    conditions = ["T0"] + [c for c in args.conditions if c != "T0"]
    prompts = {}
    for c in conditions:
        prompts[c] = IOIStudy("heldout", template_texts=(CONDITIONS[c],)).prompts(model, args.n, seed=0)
    print(f"IOI contrast graphs of {args.n} prompts per condition; paired differences to T0 (95% bootstrap)")
    per_prompt = {}
    for name in args.dicts:
        dset = load_dictionaries(name, model)
        rm = ReplacementModel(model, dset, name="organism")
        print(f"\n{name}\n| condition | template | replacement | minus T0 | largest error shares |\n|---|---|---|---|---|")
        base = None
        for c in conditions:
            r = score_variants(model, dset, prompts[c])["all dictionaries, every node (target)"]
            ci = r["replacement_ci"]
            per_prompt[name, c] = r["per_prompt"]
            if base is None:
                base, diff = r["per_prompt"], "—"
            else:
                d = paired_difference(base, r["per_prompt"])
                diff = f"{d.value:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]"
            shares = ", ".join(f"{k} {v:.4f}" for k, v in list(error_shares(rm, prompts[c]).items())[:4])
            print(f"| {c} | {CONDITIONS[c]} | {r['replacement']:.4f} [{ci['lo']:.4f}, {ci['hi']:.4f}] | {diff} | "
                  f"{shares} |", flush=True)
    if len(args.dicts) > 1:
        first = args.dicts[0]
        print(f"\npaired difference to {first}\n| set | " + " | ".join(conditions) + " |\n|---|"
              + "---|" * len(conditions))
        for name in args.dicts[1:]:
            cells = [paired_difference(per_prompt[first, c], per_prompt[name, c]) for c in conditions]
            print(f"| {name} | " + " | ".join(f"{d.value:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]" for d in cells) + " |")


if __name__ == "__main__":
    main()
