"""Writing a study's report folder: Markdown with tables and PNG plots, the aggregated graph (JSON and DOT), and the
raw numbers (CSV and JSON).

Everything except ``timings.json`` is a function of the study's spec: numbers are rounded to 6 significant digits
and the PNGs carry no timestamp or version metadata, so two runs with the same seed give byte-identical files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
from pathlib import Path

from circuits.studies.runner import StudyResult

FILES = ("report.md", "results.json", "features.csv", "components.csv", "traffic.csv", "curve.csv",
         "per_prompt.csv", "circuit.json", "circuit.dot", "faithfulness.png", "components.png", "roles.png")


def _round(x):
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return None
        return float(f"{x:.6g}")
    if isinstance(x, dict):
        return {str(k): _round(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_round(v) for v in x]
    return x


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def _table(rows: list[dict], cols: list[tuple[str, str]], digits: int = 3) -> str:
    head = "| " + " | ".join(h for _, h in cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "".join("| " + " | ".join(_fmt(r.get(c), digits) for c, _ in cols) + " |\n" for r in rows)


def _csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _round(v) for k, v in r.items()})
    return buf.getvalue()


def command_line(result: StudyResult, out: str) -> str:
    s = result.spec
    parts = ["circuits", "study", s.study, "--n", str(s.n), "--seed", str(s.seed)]
    if s.model != "organism":
        parts += ["--model", s.model]
    if s.dicts != "organism":
        parts += ["--dicts", s.dicts]
    for k, v in s.options:
        parts += [f"--{k}", str(v)]
    top = result.data["spec"]["top"]
    if top != 100:
        parts += ["--top", str(top)]
    return " ".join(shlex.quote(p) for p in parts + ["--out", out])


def _plots(data: dict, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = {"Software": None}
    rows = data["curve"]["rows"]
    ks = [r["k"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for tag, label, color in (("with_errors", "top-k features + all error nodes", "#2166ac"),
                              ("features_only", "top-k features only", "#b2182b")):
        ax.plot(ks, [r[f"top_{tag}"] for r in rows], marker="o", color=color, label=label + " (supporting)")
        ax.plot(ks, [r[f"magnitude_{tag}"] for r in rows], marker="s", linestyle=":", color=color, alpha=0.8,
                label=label + " (by |IG|)")
        ax.errorbar(ks, [r[f"random_{tag}_mean"] for r in rows], yerr=[r[f"random_{tag}_sd"] for r in rows],
                    linestyle="--", marker="x", color=color, alpha=0.6, label=label.replace("top-k", "random k"))
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("feature role nodes kept (k)")
    ax.set_ylabel("faithfulness")
    ax.set_title(f"{data['title']}: faithfulness (mean ablation)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "faithfulness.png", metadata=meta)
    plt.close(fig)

    comps = [c for c in data["components"] if c["site"] == "attn"]
    roles = data["roles"]
    heads = sorted({(c["layer"], c["head"]) for c in comps})
    if heads:
        grid = [[0.0] * len(roles) for _ in heads]
        for c in comps:
            grid[heads.index((c["layer"], c["head"]))][roles.index(c["role"])] = c["total"]
        lim = max((abs(v) for row in grid for v in row), default=1.0) or 1.0
        fig, ax = plt.subplots(figsize=(6.4, max(3.0, 0.22 * len(heads) + 1)), dpi=100)
        im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(len(roles)), roles, fontsize=8)
        ax.set_yticks(range(len(heads)), [f"L{a}H{b}" for a, b in heads], fontsize=7)
        ax.set_title("effect of each head's output at each role on the metric\n(features + error, frozen gradient)",
                     fontsize=9)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(folder / "components.png", metadata=meta)
        plt.close(fig)

    rs = data["roles_summary"]
    kinds = [("attn_feature", "attention features"), ("mlp_feature", "MLP features"), ("attn_error", "attention errors"),
             ("mlp_error", "MLP errors")]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    width = 0.8 / len(kinds)
    for j, (kind, label) in enumerate(kinds):
        ax.bar([i + j * width for i in range(len(rs))], [r[f"{kind}_ig"] for r in rs], width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rs))], [r["role"] for r in rs], fontsize=8)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_ylabel("mean IG score (metric units)")
    ax.set_title("where the metric comes from, by role (mean ablation)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "roles.png", metadata=meta)
    plt.close(fig)


def _markdown(result: StudyResult, out: str) -> str:
    d = result.data
    s = d["spec"]
    m = d["metrics"]
    c = d["circuit"]
    lines = [f"# {d['title']} — case study", "", d["description"], "",
             f"Model `{s['model']}`, dictionaries `{s['dicts']}`, {d['n_prompts']} prompts, seed {s['seed']}"
             + (f", options {s['options']}" if s["options"] else "") + ".", "",
             f"Reproduce: `{command_line(result, out)}`", "",
             f"Metric: {d['metric']}. Roles: {', '.join(d['roles'])}.", "",
             "## Dataset", "",
             f"Clean metric {m['clean_mean']:.3f} (accuracy {m['accuracy']:.1%}); corrupted counterpart "
             f"{m['corrupt_mean']:.3f}. Mean-ablation groups: {m['groups']['count']} "
             f"({m['groups']['smallest']}–{m['groups']['largest']} prompts each)."
             + (" **Some groups are too small for a meaningful mean (fewer than 5 prompts): use a larger --n.**"
                if m["groups"]["smallest"] < 5 else ""), "",
             _table([{"subset": k, **v} for k, v in m["subsets"].items()],
                    [("subset", "subset"), ("n", "n"), ("metric_mean", "mean metric"), ("accuracy", "accuracy")]),
             "## Splice fidelity", "",
             "Metric with each dictionary spliced in alone (error term off), and all at once; retained = ratio of "
             "mean metrics.", "",
             _table(d["fidelity"], [("spliced", "spliced"), ("metric_mean", "mean metric"), ("retained", "retained")]),
             "## Circuit and faithfulness", "",
             f"Per prompt, an attribution graph for the contrast (mean {d['graphs']['mean_nodes']:.0f} nodes, "
             f"{d['graphs']['mean_edges']:.0f} edges). Feature role nodes (feature × role, {c['n_candidates']} "
             "seen) are scored by their mean integrated-gradient score under mean ablation (their share of the "
             f"metric); the circuit is the {c['n_features']} with the largest positive scores (the nodes that "
             "support the answer). Everything outside the circuit is ablated to "
             f"the {d['curve']['ablation']}; features inactive on a prompt stay at 0; attention and LayerNorm live. "
             "Faithfulness = (m(circuit) − m(all ablated)) / (m(model) − m(all ablated)), with means over prompts; "
             "it can exceed 1 because nodes that work against the answer are ablated.", "",
             f"- **Faithfulness of the {c['n_features']}-feature circuit alone (every error node ablated too): "
             f"{_fmt(c['faithfulness_features_only'])}**; with every error node kept: "
             f"{_fmt(c['faithfulness_with_errors'])}.",
             f"- Error nodes alone (no features): {_fmt(d['curve']['errors_only'])}. "
             f"m(model) = {d['curve']['full_metric']:.3f}, m(everything ablated) = {d['curve']['empty_metric']:.3f}.",
             f"- IG check: |Σ scores − (m(model) − m(all ablated))| averages {d['ig_completeness']['mean_abs_gap']:.3f} "
             f"per prompt (for a mean gap to explain of {d['ig_completeness']['mean_metric_minus_empty']:.3f}); "
             f"{s['ig_steps']} steps.", "",
             "![faithfulness](faithfulness.png)", "",
             _table(d["curve"]["rows"], [("k", "k"), ("top_features_only", "top k"),
                                         ("magnitude_features_only", "top k by |IG|"),
                                         ("random_features_only_mean", "random k"),
                                         ("random_features_only_sd", "± sd"),
                                         ("top_with_errors", "top k + errors"),
                                         ("magnitude_with_errors", "by |IG| + errors"),
                                         ("random_with_errors_mean", "random k + errors"),
                                         ("random_with_errors_sd", "± sd")]),
             "## Roles", "",
             "Mean IG score (share of the metric under mean ablation) and mean total effect (frozen gradient × "
             "activation, i.e. relative to zero) summed per role.", "",
             "![roles](roles.png)", "",
             _table(d["roles_summary"], [("role", "role"), ("attn_feature_ig", "attn feat IG"),
                                         ("mlp_feature_ig", "MLP feat IG"), ("attn_error_ig", "attn err IG"),
                                         ("mlp_error_ig", "MLP err IG"), ("attn_feature_effect", "attn feat effect"),
                                         ("mlp_feature_effect", "MLP feat effect"), ("token_effect", "token effect")]),
             "## Top features", "",
             "Presence = fraction of prompts on which the feature is active at that role. All in `features.csv`; "
             "the feature ids open in the explorer's dashboards.", "",
             _table(d["features"][:30], [("node", "node"), ("ig_mean", "IG"), ("effect_mean", "effect"),
                                         ("presence", "presence")]),
             "## Components (heads and MLP layers)", "",
             "Each attention feature's and error node's effect on the metric split exactly over the heads it writes "
             "through (gradient w.r.t. the z-space output of the frozen model); MLP layers likewise. Compare with "
             "component-level circuits.", "",
             "![components](components.png)", "",
             _table(sorted(d["components"], key=lambda r: -abs(r["total"]))[:20],
                    [("site", "site"), ("layer", "layer"), ("head", "head"), ("role", "role"),
                     ("features", "features"), ("error", "error"), ("total", "total")]),
             "## Head traffic", "",
             "Edges into attention features, split by the head that reads them and weighted by the target feature's "
             "effect per unit: how much of the metric moves from one role to another through each head.", "",
             _table(d["traffic"][:20], [("head", "head"), ("from", "from"), ("to", "to"), ("effect", "effect")]),
             "## Checks", ""]
    for ck in d["checks"].values():
        lines += [f"### {ck['title']}", "", f"How: {ck['how']}", "", f"**Verdict: {ck['verdict']}**", ""]
        nums = [{"quantity": k, "value": v} for k, v in ck.items()
                if k not in ("title", "how", "verdict") and isinstance(v, int | float)]
        lines += [_table(nums, [("quantity", "quantity"), ("value", "value")])]
    if "extra" in d:
        lines += ["## More", "", "```", json.dumps(_round(d["extra"]), indent=1), "```", ""]
    lines += ["## Files", "",
              "`results.json` (everything above), `features.csv`, `components.csv`, `traffic.csv`, `curve.csv`, "
              "`per_prompt.csv`, `circuit.json` (the aggregated graph: positions are roles; opens in the explorer), "
              "`circuit.dot`, and `timings.json` (the only file that differs between runs).", ""]
    return "\n".join(lines)


def write_report(result: StudyResult, out: str | Path) -> Path:
    """Write the report folder (created if needed; files are replaced)."""
    from circuits.export import write_dot, write_json

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    d = result.data
    (folder / "results.json").write_text(json.dumps(_round(d), indent=1) + "\n")
    (folder / "features.csv").write_text(_csv(d["features"]))
    (folder / "components.csv").write_text(_csv(d["components"]))
    (folder / "traffic.csv").write_text(_csv(d["traffic"]))
    (folder / "curve.csv").write_text(_csv(d["curve"]["rows"]))
    per = [{"prompt": i, "clean_metric": a, "corrupt_metric": b}
           for i, (a, b) in enumerate(zip(d["metrics"]["per_prompt"]["clean"], d["metrics"]["per_prompt"]["corrupt"],
                                          strict=True))]
    (folder / "per_prompt.csv").write_text(_csv(per))
    write_json(result.aggregated_graph, folder / "circuit.json")
    write_dot(result.aggregated_graph, folder / "circuit.dot")
    _plots(d, folder)
    (folder / "report.md").write_text(_markdown(result, str(out)))
    (folder / "timings.json").write_text(json.dumps({k: round(v, 2) for k, v in result.timings.items()}, indent=1))
    return folder
