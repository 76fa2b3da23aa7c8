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


def _iv(x: dict | None, digits: int = 3) -> str:
    """'value [lo, hi]' of an interval dict (see `circuits.studies.stats.Interval`)."""
    if not x:
        return "—"
    return f"{_fmt(x['value'], digits)} [{_fmt(x['lo'], digits)}, {_fmt(x['hi'], digits)}]"


def _flat_rows(rows: list[dict]) -> list[dict]:
    """Curve rows with every interval split into value, lo and hi columns (for CSV)."""
    out = []
    for r in rows:
        flat: dict = {}
        for k, v in r.items():
            if isinstance(v, dict):
                flat[k], flat[f"{k}_lo"], flat[f"{k}_hi"] = v["value"], v["lo"], v["hi"]
            else:
                flat[k] = v
        out.append(flat)
    return out


RANKING_STYLE = {"ig": ("#2166ac", "o"), "influence": ("#1b7837", "s"), "atp": ("#762a83", "^"),
                 "act_grad": ("#e08214", "D")}


def _plots(data: dict, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = {"Software": None}
    rows = data["curve"]["rows"]
    ks = [r["k"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.0), dpi=100, sharey=True)
    for ax, (tag, title) in zip(axes, (("features_only", "features alone (errors ablated)"),
                                       ("with_errors", "features + every error node")), strict=True):
        for method, label in data["rankings"].items():
            vals = [r.get(f"{method}_{tag}") for r in rows]
            if all(v is None for v in vals):
                continue
            color, marker = RANKING_STYLE.get(method, ("black", "o"))
            ax.plot(ks, [v["value"] if v else float("nan") for v in vals], marker=marker, color=color,
                    label=label["label"])
        rnd = [r[f"random_{tag}"] for r in rows]
        ax.plot(ks, [v["value"] for v in rnd], linestyle="--", marker="x", color="grey",
                label="stratified random (IG's strata)")
        ax.fill_between(ks, [v["lo"] for v in rnd], [v["hi"] for v in rnd], color="grey", alpha=0.2)
        ig = [r.get(f"ig_{tag}") for r in rows]
        ax.fill_between(ks, [v["lo"] if v else float("nan") for v in ig], [v["hi"] if v else float("nan") for v in ig],
                        color=RANKING_STYLE["ig"][0], alpha=0.15)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("feature role nodes kept (k)")
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("faithfulness (standard mean ablation)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{data['title']}: faithfulness on {data['n_prompts']} evaluation prompts (bands: 95% intervals)",
                 fontsize=10)
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


def _headline_lines(d: dict) -> list[str]:
    c, cv = d["circuit"], d["curve"]["conventions"]
    n = d["sets"]
    lines = ["## Headline", "",
             f"Circuit: the {c['n_features']} feature role nodes with the largest positive integrated-gradient scores "
             f"on the {n['selection']['n']} selection prompts. Faithfulness on the {d['n_prompts']} evaluation prompts "
             f"(k = {c['k']}), 95% paired bootstrap intervals over prompts:", "",
             f"- **Standard mean ablation, features alone (every error node ablated too): "
             f"{_iv(c['features_only'])}**; with every error node kept: **{_iv(c['with_errors'])}**.",
             f"- Stratified random {c['k']} nodes (same kind, layer and role; active on ≥ 25% of selection prompts): "
             f"{_iv(c['random_features_only'])} alone, {_iv(c['random_with_errors'])} with errors. Circuit minus "
             f"random: {_iv(c['minus_random_features_only'])} alone, {_iv(c['minus_random_with_errors'])} with "
             "errors.",
             f"- Error nodes alone (no features): {_iv(c['errors_only'])}.", "",
             "Other conventions, same circuit and prompts (labelled variants; not comparable with the headline):", "",
             "| convention | features alone | + every error node | errors alone | m(∅) |", "|---|---|---|---|---|"]
    for conv, key in (("mean", ""), ("zero", "zero_"), ("held", "held_")):
        lines.append(f"| {cv[conv]['label']} | {_iv(c.get(key + 'features_only'))} | "
                     f"{_iv(c.get(key + 'with_errors'))} | {_iv(cv[conv]['errors_only'])} | "
                     f"{_iv(cv[conv]['empty_metric'])} |")
    lines += ["", f"m(model) = {_iv(d['curve']['full_metric'])}. Faithfulness = (m(C) − m(∅)) / (m(model) − m(∅)), "
              "means over prompts; everything outside the circuit ablated, attention and LayerNorm live. It can "
              "exceed 1: the circuit keeps supporting nodes only, so nodes that lowered the metric are ablated.", ""]
    return lines


def _sets_lines(d: dict) -> list[str]:
    sets = d["sets"]
    rows = [{"set": name, "n": v["n"], "use": use} for name, v, use in (
        (k, sets[k], u) for k, u in (("selection", "rankings, choice of the circuit"),
                                     ("evaluation", "faithfulness, checks, every number reported"),
                                     ("reference", "mean-ablation values (group means)"),
                                     ("test", "structurally new prompts, reported separately"),
                                     ("test_reference", "mean-ablation values for the test set")) if k in sets)]
    g = sets["main_groups"]
    lines = ["## Prompt sets", "",
             "Three sets drawn with different seeds; no clean prompt text is in two sets "
             f"({'checked: disjoint' if sets['disjoint'] else '**NOT disjoint**'}).", "",
             _table(rows, [("set", "set"), ("n", "n"), ("use", "used for")]),
             f"Mean-ablation groups of the evaluation prompts: {g['groups']} ({g['smallest']}–{g['largest']} reference "
             f"prompts each; minimum wanted {g['min_group']})."
             + (f" {len(g['coarse'])} of them use the coarser grouping (same order, length and role layout)."
                if g["coarse"] else ""), ""]
    for w in g["warnings"] + sets.get("test_groups", {}).get("warnings", []):
        lines += [f"**Warning: {w}.**", ""]
    return lines


def _test_lines(d: dict) -> list[str]:
    t = d.get("test")
    if not t:
        return []
    c, m = t["circuit"], t["metrics"]
    return ["## Test set (new templates)", "",
            "Templates written and checked before any result on them existed. Since 2026-11-30 its numbers have "
            "been read once for each default dictionary set (docs/case-studies.md); no template, ranking or "
            "convention was changed after them, and each set was chosen on other measures (docs/history.md).", "",
            f"{t['n']} prompts: {t['description']}; mean-ablation values from {t['n_reference']} reference prompts of "
            f"the same templates ({t['groups']['groups']} groups of {t['groups']['smallest']}–"
            f"{t['groups']['largest']}). The circuit is the one chosen on the selection prompts.", "",
            f"- Clean metric {_iv(m['clean_interval'])}, accuracy {_iv(m['accuracy_interval'])}.",
            f"- Standard mean ablation, top {c['k']}: features alone {_iv(c['features_only'])}; with every error "
            f"node {_iv(c['with_errors'])}; stratified random {_iv(c['random_features_only'])} / "
            f"{_iv(c['random_with_errors'])}; errors alone {_iv(c['errors_only'])}.",
            f"- Zero ablation: {_iv(c['zero_features_only'])} / {_iv(c['zero_with_errors'])}; held-inactive variant: "
            f"{_iv(c['held_features_only'])} / {_iv(c['held_with_errors'])}.", "",
            _table([{"subset": k, **v} for k, v in m["subsets"].items()],
                   [("subset", "subset"), ("n", "n"), ("metric_mean", "mean metric"), ("accuracy", "accuracy")])]


def _curve_lines(d: dict) -> list[str]:
    rows = d["curve"]["rows"]
    lines = ["## Faithfulness curves", "",
             "Standard mean ablation on the evaluation prompts, for several rankings of the same role nodes (each "
             "computed on the selection prompts), against the stratified random baseline (mean of "
             f"{len(d['curve']['random']) and 3} draws per k). Intervals: 95% paired bootstrap.", "",
             "![faithfulness](faithfulness.png)", ""]
    rk = d["rankings"]
    lines += [_table([{"ranking": m, "label": v["label"], "candidates": v["candidates"],
                       "overlap": v["overlap_with_ig_at_top"]} for m, v in rk.items()],
                     [("ranking", "ranking"), ("label", "score"), ("candidates", "role nodes ranked"),
                      ("overlap", f"shared with IG's top {d['circuit']['n_features']}")])]
    for tag, title in (("features_only", "Features alone"), ("with_errors", "Features + every error node")):
        cols = [("k", "k")] + [(f"{m}_{tag}", m) for m in rk] + [(f"random_{tag}", "stratified random"),
                                                                (f"ig_zero_{tag}", "IG, zero abl."),
                                                                (f"ig_held_{tag}", "IG, held-inactive")]
        head = "| " + " | ".join(h for _, h in cols) + " |\n|" + "---|" * len(cols) + "\n"
        body = "".join("| " + " | ".join(str(r[c]) if c == "k" else _iv(r.get(c), 2) for c, _ in cols) + " |\n"
                       for r in rows)
        lines += [f"**{title}.**", "", head + body]
    others = [m for m in rk if m != "ig" and any(f"ig_minus_{m}_features_only" in r for r in rows)]
    if others:
        cols = [("k", "k")] + [(f"ig_minus_{m}_features_only", f"IG − {m}") for m in others]
        head = "| " + " | ".join(h for _, h in cols) + " |\n|" + "---|" * len(cols) + "\n"
        body = "".join("| " + " | ".join(str(r[c]) if c == "k" else _iv(r.get(c), 3) for c, _ in cols) + " |\n"
                       for r in rows)
        lines += ["**IG against each other ranking** (features alone: the faithfulness difference on the same prompts, "
                  "paired bootstrap; an interval across 0 means the two rankings are not told apart).", "",
                  head + body]
    info = d["curve"]["random"]
    wider = [r for r in info if r["outside_stratum"] > 0]
    if wider:
        lines += ["Stratified random draws that had to take nodes outside their (kind, layer, role) stratum (too few "
                  "eligible nodes there): " + ", ".join(f"k = {r['k']}: {r['outside_stratum']:.1f} on average"
                                                        for r in wider) + ".", ""]
    return lines


def _check_lines(d: dict) -> list[str]:
    lines = ["## Checks", "",
             "Each on the evaluation prompts; 'confirmed' only when the effect's 95% interval excludes zero and the "
             "random baseline's interval and the effect is at least 10% of the clean metric.", ""]
    for ck in d["checks"].values():
        lines += [f"### {ck['title']}", "", f"How: {ck['how']}", "", f"**Verdict: {ck['verdict']}**", ""]
        nums = [{"quantity": k, "value": v} for k, v in ck.items()
                if k not in ("title", "how", "verdict", "verdict_word") and isinstance(v, int | float)]
        nums += [{"quantity": k, "value": _iv(v)} for k, v in ck.items() if isinstance(v, dict) and "lo" in v]
        lines += [_table(nums, [("quantity", "quantity"), ("value", "value")])]
    return lines


def _markdown(result: StudyResult, out: str) -> str:
    d = result.data
    s = d["spec"]
    m = d["metrics"]
    c = d["circuit"]
    lines = [f"# {d['title']} — case study", "", d["description"], "",
             f"Model `{s['model']}`, dictionaries `{s['dicts']}`, {d['n_prompts']} evaluation prompts, seed "
             f"{s['seed']}" + (f", options {s['options']}" if s["options"] else "") + ".", "",
             f"Reproduce: `{command_line(result, out)}`", "",
             f"Metric: {d['metric']}. Roles: {', '.join(d['roles'])}.", ""]
    lines += _headline_lines(d) + _sets_lines(d)
    lines += ["## Dataset (evaluation prompts)", "",
              f"Clean metric {_iv(m['clean_interval'])} (accuracy {_iv(m['accuracy_interval'])}); corrupted "
              f"counterpart {m['corrupt_mean']:.3f}.", "",
              _table([{"subset": k, **v} for k, v in m["subsets"].items()],
                     [("subset", "subset"), ("n", "n"), ("metric_mean", "mean metric"), ("accuracy", "accuracy")]),
              "Headline faithfulness by subset (standard mean ablation, same circuit):", "",
              "| subset | n | clean metric | features alone | + every error node |\n|---|---|---|---|---|\n"
              + "".join(f"| {r['subset']} | {r['n']} | {_iv(r['clean'])} | {_iv(r.get('features_only'))} | "
                        f"{_iv(r.get('with_errors'))} |\n" for r in d["by_subset"])]
    lines += _test_lines(d)
    lines += ["## Splice fidelity", "",
              "Metric with each dictionary spliced in alone (error term off), and all at once; retained = ratio of "
              "mean metrics (evaluation prompts).", "",
              _table(d["fidelity"], [("spliced", "spliced"), ("metric_mean", "mean metric"), ("retained", "retained")])]
    lines += _curve_lines(d)
    lines += [f"IG check (selection prompts): |Σ scores − (m(model) − m(all ablated))| averages "
              f"{d['ig_completeness']['mean_abs_gap']:.3f} per prompt (for a mean gap to explain of "
              f"{d['ig_completeness']['mean_metric_minus_empty']:.3f}); {s['ig_steps']} steps. Attribution graphs: "
              f"mean {d['graphs']['mean_nodes']:.0f} nodes, {d['graphs']['mean_edges']:.0f} edges; "
              f"{c['n_candidates']} role nodes with a positive IG score.", "",
              "## Roles", "",
              "Mean IG score (share of the metric under standard mean ablation, selection prompts) and mean total "
              "effect (frozen gradient × activation, i.e. relative to zero) summed per role.", "",
              "![roles](roles.png)", "",
              _table(d["roles_summary"], [("role", "role"), ("attn_feature_ig", "attn feat IG"),
                                          ("mlp_feature_ig", "MLP feat IG"), ("attn_error_ig", "attn err IG"),
                                          ("mlp_error_ig", "MLP err IG"), ("attn_feature_effect", "attn feat effect"),
                                          ("mlp_feature_effect", "MLP feat effect"), ("token_effect", "token effect")]),
              "## Top features", "",
              "Scores are means over the selection prompts. Presence = fraction of selection prompts on which the "
              "feature is active at that role. All in `features.csv`; the feature ids open in the explorer's "
              "dashboards.", "",
              _table(d["features"][:30], [("node", "node"), ("ig_mean", "IG"), ("atp_mean", "AtP"),
                                          ("act_grad_mean", "act×grad"), ("influence_mean", "influence"),
                                          ("effect_mean", "effect"), ("presence", "presence")]),
              "## Components (heads and MLP layers)", "",
              "Each attention feature's and error node's effect on the metric split exactly over the heads it writes "
              "through (gradient w.r.t. the z-space output of the frozen model); MLP layers likewise (selection "
              "prompts). These are attributions, not ablations.", "",
              "![components](components.png)", "",
              _table(sorted(d["components"], key=lambda r: -abs(r["total"]))[:20],
                     [("site", "site"), ("layer", "layer"), ("head", "head"), ("role", "role"),
                      ("features", "features"), ("error", "error"), ("total", "total")]),
              "## Head traffic", "",
              "Edges into attention features, split by the head that reads them and weighted by the target feature's "
              "effect per unit: how much of the metric moves from one role to another through each head (frozen "
              "attention; not causal evidence on its own).", "",
              _table(d["traffic"][:20], [("head", "head"), ("from", "from"), ("to", "to"), ("effect", "effect")])]
    if "heads" in d:
        from circuits.studies.heads import render_head_section

        lines += [render_head_section(d["heads"]), ""]
    if "qk" in d:
        from circuits.studies.qk_section import render_qk_section

        lines += [render_qk_section(d["qk"]), ""]
    lines += _check_lines(d)
    if "extra" in d:
        lines += ["## More", "", "```", json.dumps(_round(d["extra"]), indent=1), "```", ""]
    lines += ["## Files", "",
              "`results.json` (everything above), `features.csv`, `components.csv`, `traffic.csv`, `curve.csv` (every "
              "curve point with its interval), `per_prompt.csv` (evaluation prompts), `circuit.json` (the aggregated "
              f"graph over the first {min(d['n_prompts'], 40)} evaluation prompts: positions are roles; opens in the "
              "explorer), `circuit.dot`, and `timings.json` (the only file that differs between runs).", ""]
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
    (folder / "curve.csv").write_text(_csv(_flat_rows(d["curve"]["rows"])))
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
