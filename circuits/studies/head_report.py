"""The head analysis of `circuits.studies.heads` as a Markdown section of a study report, and the one-line
formatting of an effect with its interval that the role table shares."""

from __future__ import annotations

from circuits.studies.head_patching import ATTENTION_STATS, PATHS, SOURCES


def _best(items: dict, key) -> tuple[str, dict] | None:
    if not items:
        return None
    name = max(sorted(items), key=lambda n: key(items[n]))
    return name, items[name]


def _fmt(d: dict) -> str:
    return f"{d['value']:.3f} [{d['lo']:.3f}, {d['hi']:.3f}]"



# -- Markdown -------------------------------------------------------------------------------------------------------


def render_head_section(data: dict) -> str:
    """The head analysis as a Markdown section of a study report."""
    m = data["metric"]
    lines = [
        "## Heads: component-level causal analysis (Wang et al. 2022, adapted)",
        "",
        f"Evaluation prompts: {data['n_evaluation']}; reference prompts (ablation means only): "
        f"{data['n_reference']}. Intervals: 95% paired bootstrap over prompts.",
        "",
        f"- **Mean ablation** of each head's `hook_z`: {data['convention']}. Effect = drop of the mean of "
        "logit(IO) − logit(S); baseline = " + data["baseline"]["how"] + f" ({_fmt(data['baseline'])}).",
        "- **Direct effect**: the head's (z − z̄) at END through W_O, the final LayerNorm (scale frozen) and "
        "W_U[IO] − W_U[S].",
        "- **Path patching**: a sender's z from the ABC prompt (S2 replaced) or the IO/S-swapped prompt, every other "
        "head frozen at clean (MLPs recomputed), reaching only the receivers' query / key / value inputs.",
        "- **Verdict**: confirmed = interval above zero, above a random baseline's interval and its lower end ≥ 10% "
        "of the clean metric (of the source's total effect for patching). Baselines: ablations and total patching "
        "effects against a head drawn at random; direct effects against another head drawn at random from the same "
        "layer (MLP layers against another MLP layer); path patching against the same path from a sender drawn at "
        "random; backup rises against the rise of a random non-ablated head after the first ablated layer; a joint "
        "ablation against as many other heads drawn at random, from the same layers where enough are left. Routes (other heads or MLPs frozen) are decompositions, not verdicts.",
        "",
        f"Metric: clean {_fmt(m['clean'])}; ABC {_fmt(m['abc'])}; swapped {_fmt(m['swapped'])}."
        + ("" if "baselines" not in data.get("patching", {}) else
           " Random-head baseline of patching (" + data["patching"]["baselines"]["how"] + "): "
           + "; ".join(f"{SOURCES[s]} {_fmt(data['patching']['baselines'][s])}" for s in SOURCES
                       if s in data["patching"]["baselines"]) + ".")
        + ("" if "direct_baselines" not in data else
           " Mean direct effect of a head, by layer (each head is judged against its layer's other heads): "
           + ", ".join(f"{k} {_fmt(v)}" for k, v in data["direct_baselines"].items() if isinstance(v, dict)) + "."),
        "",
        "### Role table",
        "",
        "| role | head | evidence | effect [95% CI] | verdict | mean-ablation drop | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    rep = data.get("replication")
    replicated = {(x["role"], x["head"]): x["replicated"] for x in rep["rows"]} if rep else {}
    for r in data["roles"]:
        eff = _fmt(r["effect"]) if r.get("effect") else "–"
        abl = f"{_fmt(r['ablation'])} ({r['ablation_verdict']})" if r.get("ablation") else "–"
        note = "; ".join(x for x in (r.get("note", ""), r.get("attention", "")) if x)
        word = r["verdict"]
        if (r["role"], r["head"]) in replicated:  # the role's claim in one cell: confirmed here, and on the other set?
            word += ", replicated" if replicated[(r["role"], r["head"])] else ", **not replicated**"
        lines.append(f"| {r['role']} | {r['head'] or '—'} | {r['evidence']} | {eff} | {word} | {abl} | "
                     f"{note} |")
    if rep:
        lines += ["", f"**Replication** ({rep['how']}; n = {rep['n']}):", "",
                  "| role | head | evaluation effect | effect on the other set | on the other set |", "|---|---|---|---|---|"]
        for r in rep["rows"]:
            lines.append(f"| {r['role']} | {r['head']} | {_fmt(r['effect']) if r['effect'] else '–'} | "
                         f"{_fmt(r['other_effect']) if r['other_effect'] else '–'} | "
                         f"{'replicated' if r['replicated'] else 'not replicated: ' + r['other_verdict']} |")
    lines += ["", "### Every head", "",
              "| head | ablation drop | verdict | direct effect | END→IO | END→S1 | END→S2 | S2→S1 | S2→S1+1 | prev |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for n, t in data["heads"].items():
        a = t["attention"]
        lines.append(f"| {n} | {_fmt(t['ablation'])} | {t['ablation_verdict']['verdict']} | {_fmt(t['direct'])} | "
                     + " | ".join(f"{a[k]['value']:.2f}" for k in ATTENTION_STATS) + " |")
    movers_title = ("into the name movers" if data.get("receivers", {}).get("kind") == "name movers"
                    else "into the name-attending heads (candidates; no name mover is confirmed)")
    for key, title in (("name_movers", movers_title), ("s_inhibition", "into the S-inhibition heads")):
        pp = data["path_patching"].get(key)
        if not pp:
            continue
        lines += ["", f"### Path patching {title} ({', '.join(pp['receivers'])})", ""]
        for s, res in pp["sources"].items():
            base = res.get("baseline")
            lines += [f"Source: {SOURCES[s]}; total effect m(clean) − m(source) = {_fmt(res['total'])}."
                      + (" Random sender (the mean over every sender): " + ", ".join(
                          f"{p} {_fmt(base[p])}" for p in PATHS) + "." if base else ""), "",
                      "| sender | → queries | → keys | → values |", "|---|---|---|---|"]
            ranked = sorted(res["senders"].items(), key=lambda kv: -max(abs(kv[1][p]["value"]) for p in PATHS))
            for n, row in ranked:
                cells = [f"{_fmt(row[p])}{' ✓' if row[p]['verdict'] == 'confirmed' else ''}" for p in PATHS]
                lines.append(f"| {n} | " + " | ".join(cells) + " |")
            if res.get("screened_out"):
                what = ("Path-patched, below the screen and not confirmed" if base else
                        "Not path-patched (activation patching below the screen)")
                lines += [f"{what}: {', '.join(res['screened_out'])}.", ""]
            lines.append("")
    if "backup" in data:
        b = data["backup"]
        who = "name movers" if b.get("kind") == "name movers" else "name-attending heads (candidates)"
        lines += ["### Backup", "",
                  f"Mean-ablating the {who} ({', '.join(b['ablated'])}) together drops the metric by "
                  f"{_fmt(b['metric_drop'])}"
                  + (f" ({b['metric_drop_verdict']['verdict']}; as many other heads drawn at random "
                     f"{_fmt(b['metric_drop_baseline'])})" if b.get("metric_drop_baseline") else "")
                  + f"; their summed direct effect is {_fmt(b['direct_of_movers'])}. Largest rises of another head's "
                  "direct effect" + (f" (a random non-ablated head's after the first ablated layer: {_fmt(b['rise_baseline'])})"
                                     if b.get("rise_baseline") else "") + ":", "",
                  "| head | rise | verdict |", "|---|---|---|"]
        for n, r in sorted(b["rise"].items(), key=lambda kv: -kv[1]["value"])[:5]:
            lines.append(f"| {n} | {_fmt(r)} | {r['verdict']} |")
        lines.append("")
    if data.get("features"):
        lines += ["### Attention-SAE features of the role heads", "",
                  "Each role head's slice of z decomposed as (codes × decoder rows) + SAE error; part = a feature's "
                  "share of the quantity named (mean over prompts).", "",
                  "| head | role | at | quantity | total | error part | top features (part, share) |",
                  "|---|---|---|---|---|---|---|"]
        for n, f in data["features"].items():
            top = ", ".join(f"{t['feature']} ({t['part']:.3f}, {t['share']:.0%})" for t in f["top"])
            lines.append(f"| {n} | {f['role']} | {f['position']} | {f['quantity']} | {f['total']:.3f} | "
                         f"{f['error_part']:.3f} | {top} |")
        lines.append("")
    return "\n".join(lines) + "\n"
