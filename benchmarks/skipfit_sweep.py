"""The trade of `circuits dicts fit-skip`: IOI replacement score against ordinary-text fidelity, per IOI weight.

    python benchmarks/skipfit_sweep.py --dicts SET [--sites transcoder_L3] [--weights 100 300 1000] [--rows 2560]
        [--phases 3 5] [--prompts 32] [--keep DIR] [--template-split]

For each weight it fits the skip term onto SET (`circuits.dictionaries.skipfit.fit_skip`, the other options as
given) and prints one table row: each fitted transcoder's FVU and CE increase spliced alone, and the CE increase
with every dictionary of the set spliced, on 64 rows of `dicts eval`'s held-out stream (corpus seed 0,
"heldout-dicts"; not the rows any fit reads), then the replacement score of the IOI contrast graphs of `--prompts`
*training-template* prompts (`benchmarks/clt.py scores`' prompts; held-out templates are left for one look at a
chosen set). The first row is SET itself. `--keep DIR` saves each fitted set as DIR/w<weight>.

`--template-split` asks instead whether the fit's gain carries over to training templates it did not see: with the
first weight, it fits once on the even training templates' prompts and once on the odd ones', and prints the mean
paired gain in replacement score (95% bootstrap interval) on the graphs of the fitted and of the other templates.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch


@torch.no_grad()
def text_fidelity(model, dset, sites: list[str], rows: int = 64) -> dict[str, float]:
    """{site: FVU, "dce <site>": CE increase alone, "dce all": CE increase with every member spliced} on held-out
    rows, in batches of 16. The FVU here centres each batch of 16 rows on its own mean, so it is close to, not
    equal to, `dicts eval`'s (centred over all its rows); the CE is `dicts eval`'s per-token loss."""
    from circuits.dictionaries.evaluate import _ce_and_logprobs, heldout_tokens
    from circuits.replacement import splice_hooks

    tokens = heldout_tokens(model.cfg.n_ctx, rows, 0)

    def ce(t, hooks=()):
        return _ce_and_logprobs(model, t, list(hooks))[0].mean().item()

    batches = [tokens[i:i + 16] for i in range(0, rows, 16)]
    clean = sum(ce(t) for t in batches) / len(batches)
    out = {}
    for name in sites:
        d = dset.dictionaries[name]
        sq = tot = 0.0
        for t in batches:
            _, cache = model.run_with_cache(t, names_filter=lambda n, d=d: n in (d.hook_in, d.hook_out))
            x = d.flatten_input(cache[d.hook_in]).reshape(-1, d.cfg.d_in)
            y = cache[d.hook_out].reshape(-1, d.cfg.d_out)
            sq += (y - d.reconstruct(d.encode(x), x)).pow(2).sum().item()
            tot += (y - y.mean(0)).pow(2).sum().item()
        out[name] = sq / tot
        out[f"dce {name}"] = sum(ce(t, splice_hooks([d], "off")) for t in batches) / len(batches) - clean
    out["dce all"] = sum(ce(t, splice_hooks(list(dset), "off")) for t in batches) / len(batches) - clean
    return out


def replacement(model, dset, prompts) -> list[float]:
    """Replacement score of the IOI contrast graph of each prompt, every dictionary in the graph (the target's
    convention; `benchmarks/clt.py`'s first variant)."""
    from clt import score_variants

    return score_variants(model, dset, prompts)["all dictionaries, every node (target)"]["per_prompt"]


def template_split(model, base, prompts, cfg) -> None:
    """Fit on the even, then the odd training templates; gains on the graphs of fitted and other templates."""
    import dataclasses

    from circuits.dictionaries.skipfit import fit_skip
    from circuits.studies.stats import mean_interval

    template = [int(p.group.split("-template-")[1].split("-")[0]) for p in prompts]
    before = replacement(model, base, prompts)
    print(f"input set: replacement {sum(before) / len(before):.4f} on {len(prompts)} training-template graphs")
    for parity in (0, 1):
        fitted, _ = fit_skip(model, base, dataclasses.replace(cfg, ioi_templates=tuple(range(parity, 16, 2))),
                             progress=False)
        after = replacement(model, fitted, prompts)
        for label, same in (("fitted templates", True), ("other templates", False)):
            gain = [a - b for a, b, t in zip(after, before, template, strict=True) if (t % 2 == parity) == same]
            ci = mean_interval(gain)
            print(f"fit on {'even' if parity == 0 else 'odd'} templates, w {cfg.ioi_weight:g}: gain on {label} "
                  f"{ci.value:+.4f} [{ci.lo:+.4f}, {ci.hi:+.4f}] ({len(gain)} graphs)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dicts", default="organism-finetuned", help="the input set (default organism-finetuned: "
                    "the shipped set without skip terms; the default set has its skip terms fitted already)")
    ap.add_argument("--sites", nargs="+", default=["transcoder_L3"])
    ap.add_argument("--weights", type=float, nargs="+", default=[100.0, 300.0, 1000.0])
    ap.add_argument("--rows", type=int, default=2560)
    ap.add_argument("--phases", type=int, nargs="+", default=[3, 5])
    ap.add_argument("--ioi-positions", choices=["answer", "all"], default="answer")
    ap.add_argument("--prompts", type=int, default=32, help="training-template IOI graphs for the score (0: skip)")
    ap.add_argument("--keep", default=None)
    ap.add_argument("--template-split", action="store_true", help="fit on half the training templates and compare "
                    "the gain on those and on the others (first weight)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from circuits.dictionaries import load_dictionaries
    from circuits.dictionaries.skipfit import SkipFitConfig, fit_skip
    from circuits.model import load_model
    from circuits.studies.ioi import IOIStudy

    model, _ = load_model("organism", "cpu")
    base = load_dictionaries(args.dicts, model)
    prompts = IOIStudy("train").prompts(model, args.prompts, seed=0) if args.prompts else []
    if args.template_split:
        if not prompts:
            ap.error("--template-split needs --prompts > 0")
        template_split(model, base, prompts, SkipFitConfig(sites=tuple(args.sites), rows=args.rows,
                                                         corpus_phases=tuple(args.phases), ioi_weight=args.weights[0],
                                                         ioi_positions=args.ioi_positions))
        return
    head = " | ".join(f"{s} FVU | {s} ΔCE" for s in args.sites)
    print(f"| IOI weight | {head} | all spliced ΔCE | replacement ({args.prompts} training-template graphs) |")
    print("|---" * (2 * len(args.sites) + 3) + "|")
    for w in [None, *args.weights]:
        if w is None:
            dset = base
        else:
            cfg = SkipFitConfig(sites=tuple(args.sites), rows=args.rows, corpus_phases=tuple(args.phases),
                                ioi_weight=w, ioi_positions=args.ioi_positions)
            dset, _ = fit_skip(model, base, cfg, progress=False)
            if args.keep:
                dset.save(Path(args.keep) / f"w{w:g}")
        f = text_fidelity(model, dset, args.sites)
        cells = " | ".join(f"{f[s]:.4f} | {f[f'dce {s}']:+.4f}" for s in args.sites)
        score = f"{sum(r := replacement(model, dset, prompts)) / len(r):.4f}" if prompts else "—"
        print(f"| {'input set' if w is None else f'{w:g}'} | {cells} | {f['dce all']:+.4f} | {score} |", flush=True)


if __name__ == "__main__":
    main()
