"""QK attribution in the case studies: why the heads that move the answer-relevant tokens attend where they do.

For a chosen head (layer l, head h), a query role (END) and two key roles (a, b) — IOI: END→IO versus END→S2;
induction: END→B (the token after the first copy of the current token) versus END→A (that first copy) — every
prompt's preference ``s[END, a] − s[END, b]`` (pre-softmax, frozen LayerNorm scales) is decomposed exactly over
(query-side source, key-side source) pairs with `circuits.attribution.qk.explain_attention`. Each side's marginals
are then aggregated **by role node**, like the studies' role keys: a feature (or error node, or the token + position
embedding, or the constant part) at a role stands for that source at each prompt's position of that role. A role
node's contribution on a prompt where it is absent is 0; the table gives its mean over prompts with a paired
bootstrap 95% interval (`stats.mean_interval`). Key-side sources at key b enter with a minus sign (they belong to
the subtracted score). Token embeddings are pooled per role (``emb@IO``: the name at IO, whatever the name).

**Intervention check.** The top query-side role nodes (largest positive mean contribution, i.e. those supporting
the head's preference) are removed at END on every prompt where they are active:

* **frozen**: their stream contributions at the layer's input are subtracted from the residual stream at END, and
  the scores are recomputed by the model's own forward pass inside `ReplacementModel.frozen` (LayerNorm scales
  held). The preference must move by exactly minus their summed query marginals; the report gives the largest
  discrepancy over prompts. (An identity of the decomposition, checked as such: it cannot fail unless the
  decomposition is wrong.)
* **live**: the same vectors are subtracted at END from the unfrozen model's residual stream entering layer l
  (LayerNorm recomputed); the change of the attention pattern ``A[END, a] − A[END, b]`` is reported with an
  interval, with the predicted direction (the sign of the frozen change) and the share of prompts that move that
  way.
* **selection and test**: the top nodes are ranked on half of the prompts (pairs alternate, ``i % 4 < 2``) and
  removed on the other half only, so the check does not test nodes on the prompts that chose them.
* **baselines**, each removed the same way and scored against *its own* predicted change on each prompt: the
  next-ranked nodes (ranks 6–10 of the same ranking), and as many other query-side role nodes present at END as the
  top nodes removed there (constant parts excluded), drawn at random (seeded). The live change says whether the top
  nodes matter more than others; the share of prompts that move the predicted way says whether the frozen
  prediction carries over to the live model for any nodes, not only the chosen ones.

Everything is deterministic: prompts in the given order, role nodes sorted by value then by name, seeded bootstraps.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from circuits.attribution.qk import explain_attention, stream_sources
from circuits.attribution.sources import collect_sources
from circuits.attribution.workers import map_with_model_copies
from circuits.model import hook_attn_pattern, hook_resid_pre
from circuits.studies.stats import mean_interval

TOP_NODES = 8  # role nodes listed per side
TOP_GROUPS = 6  # (kind, layer, role) groups listed per side
REMOVE = 5  # query-side role nodes removed by the intervention check

_TAG = {"attn_feature": "A", "mlp_feature": "M", "attn_error": "errA", "mlp_error": "errM", "token": "emb"}


@dataclass(frozen=True)
class QKHead:
    """A head to explain: preference of query role `query` for key role `key_a` over key role `key_b`."""

    layer: int
    head: int
    query: str
    key_a: str
    key_b: str
    why: str = ""

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}"

    @property
    def contrast(self) -> str:
        return f"{self.query}→{self.key_a} − {self.query}→{self.key_b}"


def role_node(node, role: str) -> str:
    """The role-node label of a source at a role: ``A0#12@S2``, ``errM1@END``, ``emb@IO``, ``const@END``."""
    if node is None:
        return f"const@{role}"
    if node.kind == "token":
        return f"emb@{role}"
    tag = _TAG.get(node.kind, node.kind)
    return f"{tag}{node.layer}#{node.index}@{role}" if node.index >= 0 else f"{tag}{node.layer}@{role}"


def _group(label: str) -> str:
    """The component of a role node: ``A0#12@S2`` → ``A0@S2`` (every feature of that dictionary at that role)."""
    head, _, role = label.partition("@")
    return f"{head.split('#')[0]}@{role}"


def _iv(values, seed: int) -> dict:
    return mean_interval(np.asarray(values, dtype=np.float64).tolist(), seed=seed).as_dict()


def _table(rows: list[dict[str, float]], seed: int, top: int) -> list[dict]:
    """Role nodes by |mean| (ties by name), the `top` first, each with its interval over the prompts (0 where
    absent)."""
    n = len(rows)
    sums: dict[str, float] = defaultdict(float)
    present: dict[str, int] = defaultdict(int)
    for r in rows:
        for k, v in r.items():
            sums[k] += v
            present[k] += 1
    order = sorted(sums, key=lambda k: (-abs(sums[k]), k))[:top]
    return [{"node": k, **_iv([r.get(k, 0.0) for r in rows], seed), "presence": present[k] / n} for k in order]


def _positions(pp, spec: QKHead) -> tuple[int, int, int] | None:
    roles = pp.roles
    if spec.query not in roles or spec.key_a not in roles or spec.key_b not in roles:
        return None
    return roles.index(spec.query), roles.index(spec.key_a), roles.index(spec.key_b)


@torch.no_grad()
def _removal(rm, cache, src, spec: QKHead, p: int, a: int, b: int, remove: list[str], qmarg: dict[str, float]
             ) -> dict:
    """Subtract the stream contributions at END of the role nodes in `remove` (those active on this prompt):
    frozen change of the preference (model's own forward pass) and its prediction; live change of the pattern."""
    nodes, writes, pos, _ = stream_sources(rm, cache, spec.layer, src, positions=[p])
    rows = [i for i, n in enumerate(nodes) if int(pos[i]) == p and role_node(n, spec.query) in remove]
    predicted = -sum(qmarg.get(role_node(nodes[i], spec.query), 0.0) for i in rows)
    delta = writes[rows].sum(0) if rows else torch.zeros_like(writes[0])
    attn = rm.model.blocks[spec.layer].attn
    got: dict[str, torch.Tensor] = {}

    def subtract(act, hook):
        act = act.clone()
        act[1, p] -= delta.to(act.dtype)
        return act

    def keep(name):
        def fn(act, hook):
            got[name] = act[:, spec.head, p].detach().double().clone()
        return fn

    tokens = cache.tokens[None].expand(2, -1).to(rm.model.cfg.device)
    hooks = [(hook_resid_pre(spec.layer), subtract), (attn.hook_attn_scores.name, keep("s"))]
    with rm.model.hooks(fwd_hooks=hooks), rm.frozen(cache):
        rm.model(tokens, stop_at_layer=spec.layer + 1)
    frozen = got["s"]
    with rm.model.hooks(fwd_hooks=[(hook_resid_pre(spec.layer), subtract), (hook_attn_pattern(spec.layer),
                                                                             keep("A"))]):
        rm.model(tokens, stop_at_layer=spec.layer + 1)
    live = got["A"]
    return {"removed": len(rows), "predicted": predicted,
            "frozen": float((frozen[1, a] - frozen[1, b]) - (frozen[0, a] - frozen[0, b])),
            "live_pattern": float((live[1, a] - live[1, b]) - (live[0, a] - live[0, b]))}


def _decompose(rm, pp, heads: list[QKHead]) -> list[dict | None]:
    """One prompt's QK decomposition for every head (None where the prompt lacks the head's roles): its query-side
    and key-side marginals by role node, the preference, the pattern difference and the decomposition's gap."""
    cache = rm.run(pp.tokens)
    src = collect_sources(rm, cache)
    out: list[dict | None] = []
    for spec in heads:
        where = _positions(pp, spec)
        if where is None:
            out.append(None)
            continue
        p, a, b = where
        qk = explain_attention(rm, cache, spec.layer, spec.head, p, (a, b), sources=src)
        q: dict[str, float] = defaultdict(float)
        for m in qk.query_marginals():
            q[role_node(m.node, spec.query)] += m.contribution
        k: dict[str, float] = defaultdict(float)
        for m in qk.key_marginals():
            k[role_node(m.node, pp.roles[m.pos])] += m.contribution
        out.append({"q": dict(q), "k": dict(k), "value": qk.value, "pattern": float(qk.pattern[a] - qk.pattern[b]),
                    "gap": abs(qk.total() - qk.value)})
    return out


def _removals(rm, task) -> list[tuple[dict, dict, dict]]:
    """One test prompt's removal checks: per job (head, top nodes, next-ranked nodes, random nodes, the head's query
    marginals on the prompt), the (top, next-ranked, random) removals."""
    pp, jobs = task
    cache = rm.run(pp.tokens)
    src = collect_sources(rm, cache)
    out = []
    for spec, chosen, nxt, drawn, qm in jobs:
        p, a, b = _positions(pp, spec)
        out.append(tuple(_removal(rm, cache, src, spec, p, a, b, nodes, qm) for nodes in (chosen, nxt, drawn)))
    return out


@torch.no_grad()
def qk_section(rm, prepared: list, heads: list[QKHead], seed: int = 0, *, n_prompts: int | None = None,
               top: int = TOP_NODES, remove: int = REMOVE, workers: int = 1) -> dict:
    """The QK decomposition of each head in `heads`, aggregated over `prepared` prompts (the first `n_prompts` of
    them when given), with the intervention check of the module docstring. JSON-serialisable; deterministic. With
    `workers` > 1 prompts run side by side, each worker single-threaded with its own copy of the model: the same
    section when the caller runs one torch thread too (as a study does: `run_study`)."""
    prompts = list(prepared[:n_prompts] if n_prompts else prepared)
    per_head: dict[str, dict] = {h.name + ":" + h.contrast: {"q": [], "k": [], "value": [], "pattern": [],
                                                             "gap": 0.0, "index": []} for h in heads}
    for i, found in enumerate(map_with_model_copies(lambda m, pp: _decompose(m, pp, heads), prompts, rm, workers)):
        for spec, one in zip(heads, found, strict=True):
            if one is None:
                continue
            rec = per_head[spec.name + ":" + spec.contrast]
            for key in ("q", "k", "value", "pattern"):
                rec[key].append(one[key])
            rec["gap"] = max(rec["gap"], one["gap"])
            rec["index"].append(i)
    # the removal check: each head's top supporting query-side role nodes (constant parts cannot be removed), ranked
    # on the selection half of the prompts (pairs alternate: i % 4 < 2) and removed on the other half only
    removals: dict[str, list[str]] = {}
    next_ranked: dict[str, list[str]] = {}
    for key, rec in per_head.items():
        chosen_on = [q for q, i in zip(rec["q"], rec["index"], strict=True) if _selects(i)]
        qmeans = _means(chosen_on) if chosen_on else {}
        ranked = [k for k in sorted(qmeans, key=lambda k: (-qmeans[k], k))
                  if qmeans[k] > 0 and not k.startswith("const@")]
        removals[key], next_ranked[key] = ranked[:remove], ranked[remove:2 * remove]
        rec["checks"], rec["random_checks"], rec["next_checks"] = [], [], []
    import random

    # baselines, each scored against its own prediction on its prompt: the next-ranked nodes, and as many other
    # nodes present there as the top nodes removed there, drawn at random — drawn here, in prompt order, so that the
    # draws do not depend on how the removals are spread over workers
    rng = random.Random(f"qk-removal-{seed}")
    tasks, owners = [], []
    for i, pp in enumerate(prompts):
        if _selects(i):
            continue
        todo = [(spec, per_head[spec.name + ":" + spec.contrast]) for spec in heads]
        todo = [(spec, rec) for spec, rec in todo if i in rec["index"]]
        if not todo:
            continue
        jobs = []
        for spec, rec in todo:
            qm = rec["q"][rec["index"].index(i)]
            key = spec.name + ":" + spec.contrast
            chosen = removals[key]
            n_here = sum(1 for k in chosen if qm.get(k, 0.0) != 0)
            others = sorted(k for k, v in qm.items() if v != 0 and k not in chosen and not k.startswith("const@"))
            jobs.append((spec, chosen, next_ranked[key], rng.sample(others, min(n_here, len(others))), qm))
        tasks.append((pp, jobs))
        owners.append([rec for _, rec in todo])
    for recs, done in zip(owners, map_with_model_copies(_removals, tasks, rm, workers), strict=True):
        for rec, (chosen_check, next_check, random_check) in zip(recs, done, strict=True):
            rec["checks"].append(chosen_check)
            rec["next_checks"].append(next_check)
            rec["random_checks"].append(random_check)
    out_heads = []
    for spec in heads:
        rec = per_head[spec.name + ":" + spec.contrast]
        if not rec["value"]:
            out_heads.append({"head": spec.name, "contrast": spec.contrast, "n": 0, "why": spec.why})
            continue
        qtab = _table(rec["q"], seed, top)
        ktab = _table(rec["k"], seed, top)
        qgroups = _table([_grouped(r) for r in rec["q"]], seed, TOP_GROUPS)
        kgroups = _table([_grouped(r) for r in rec["k"]], seed, TOP_GROUPS)
        knet = _table([_net(r) for r in rec["k"]], seed, top)
        removed = removals[spec.name + ":" + spec.contrast]
        checks = rec["checks"]
        pred = [c["predicted"] for c in checks]
        live = [c["live_pattern"] for c in checks]
        direction = float(np.sign(np.mean(pred))) if pred else 0.0
        moved = [c for c in checks if c["removed"]]
        rand, nxt = rec["random_checks"], rec["next_checks"]
        out_heads.append({
            "head": spec.name, "layer": spec.layer, "h": spec.head, "contrast": spec.contrast, "why": spec.why,
            "n": len(rec["value"]), "score": _iv(rec["value"], seed), "pattern": _iv(rec["pattern"], seed),
            "max_abs_gap": rec["gap"], "query": qtab, "key": ktab, "query_groups": qgroups, "key_groups": kgroups,
            "key_net": knet,
            "removal": {
                "nodes": removed, "prompts_with_any": len(moved), "n_test": len(checks),
                "n_selection": sum(1 for i in rec["index"] if _selects(i)),
                "predicted": _iv(pred, seed) if checks else None,
                "frozen": _iv([c["frozen"] for c in checks], seed) if checks else None,
                "max_abs_frozen_error": max((abs(c["frozen"] - c["predicted"]) for c in checks), default=0.0),
                "live_pattern": _iv(live, seed) if checks else None, "predicted_direction": direction,
                "share_in_direction": _share(moved),
                "next": {**_baseline(nxt, seed), "nodes": next_ranked[spec.name + ":" + spec.contrast]},
                "random": _baseline(rand, seed),
            },
        })
    return {"n_prompts": len(prompts), "n_available": len(prepared), "heads": out_heads}


def _selects(i: int) -> bool:
    """Prompt i (in the given order) ranks the nodes to remove; the others test the removal. IOI prompts alternate
    ABBA and BABA in pairs, so both halves hold both orders."""
    return i % 4 < 2


def _share(checks: list[dict]) -> float:
    """Among prompts where something was removed, the share whose live pattern change has the sign of that
    removal's own predicted change (None without such prompts)."""
    moved = [c for c in checks if c["removed"] and c["predicted"] != 0]
    return (sum(1 for c in moved if np.sign(c["live_pattern"]) == np.sign(c["predicted"])) / len(moved)
            if moved else None)  # None, not nan: the section compares equal to itself (determinism)


def _baseline(checks: list[dict], seed: int) -> dict:
    return {"live_pattern": _iv([c["live_pattern"] for c in checks], seed) if checks else None,
            "predicted": _iv([c["predicted"] for c in checks], seed) if checks else None,
            "prompts_with_any": sum(1 for c in checks if c["removed"]), "share_in_direction": _share(checks)}


def _grouped(row: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for k, v in row.items():
        out[_group(k)] += v
    return dict(out)


def _net(row: dict[str, float]) -> dict[str, float]:
    """Key-side role nodes summed over the key roles (``A0#12@IO`` and ``A0#12@S2`` → ``A0#12``): what a source adds
    to the preference wherever it sits; a source active at both keys counts + at one and − at the other."""
    out: dict[str, float] = defaultdict(float)
    for k, v in row.items():
        out[k.partition("@")[0]] += v
    return dict(out)


def _means(rows: list[dict[str, float]]) -> dict[str, float]:
    acc: dict[str, float] = defaultdict(float)
    for r in rows:
        for k, v in r.items():
            acc[k] += v / len(rows)
    return dict(acc)


# -- choosing the heads -----------------------------------------------------------------------------------------------


def ioi_heads(head_data: dict | None, min_attention: float = 0.5) -> list[QKHead]:
    """The role heads of the IOI head analysis (single heads of its role table) whose END attention to the names
    (IO + S1 + S2) is at least `min_attention`; contrast END→IO − END→S2, or END→S2 − END→IO for a head that
    attends S2 more than IO; a head that attends IO at least as much as S2 gets END→IO − END→S1 as well (IO over
    the subject's first mention, the preference IOI needs from a head that reads the first clause)."""
    if not head_data:
        return []
    import re

    out, seen = [], set()
    for row in head_data.get("roles", []):
        n = row.get("head")
        if not n or n in seen or not re.fullmatch(r"L\d+H\d+", n):
            continue
        seen.add(n)
        att = head_data["heads"][n]["attention"]
        names = att["end_io"]["value"] + att["end_s1"]["value"] + att["end_s2"]["value"]
        if names < min_attention:
            continue
        layer, head = (int(x) for x in n[1:].split("H"))
        io_first = att["end_io"]["value"] >= att["end_s2"]["value"]
        why = (f"role: {row['role']}; END→IO {att['end_io']['value']:.2f}, END→S1 {att['end_s1']['value']:.2f}, "
               f"END→S2 {att['end_s2']['value']:.2f}")
        out.append(QKHead(layer, head, "END", "IO" if io_first else "S2", "S2" if io_first else "IO", why))
        if io_first:  # the contrast IOI turns on: the indirect object over the subject's first mention
            out.append(QKHead(layer, head, "END", "IO", "S1", why + "; IO over S1, the two first-clause names"))
    return sorted(out, key=lambda h: (h.layer, h.head))


@torch.no_grad()
def attending_heads(rm, prepared: list, query: str, key: str, versus: str, min_attention: float = 0.3,
                    most: int = 3) -> list[QKHead]:
    """Heads whose mean attention from role `query` to role `key` over `prepared` is at least `min_attention` and
    above their attention to `versus` (at most `most`, strongest first; ties by layer and head)."""
    L, H = rm.cfg.n_layers, rm.cfg.n_heads
    to_key, to_versus, n = torch.zeros(L, H, dtype=torch.float64), torch.zeros(L, H, dtype=torch.float64), 0
    for pp in prepared:
        if query not in pp.roles or key not in pp.roles or versus not in pp.roles:
            continue
        p, a, b = pp.roles.index(query), pp.roles.index(key), pp.roles.index(versus)
        store: dict[int, torch.Tensor] = {}
        hooks = [(hook_attn_pattern(layer), lambda act, hook, layer=layer, store=store:
                  store.__setitem__(layer, act[0].double())) for layer in range(L)]
        with rm.model.hooks(fwd_hooks=hooks):
            rm.model(pp.tokens[None].to(rm.model.cfg.device))
        for layer in range(L):
            to_key[layer] += store[layer][:, p, a].cpu()
            to_versus[layer] += store[layer][:, p, b].cpu()
        n += 1
    if not n:
        return []
    to_key, to_versus = to_key / n, to_versus / n
    cands = [(float(to_key[la, h]), la, h) for la in range(L) for h in range(H)
             if to_key[la, h] >= min_attention and to_key[la, h] > to_versus[la, h]]
    cands.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [QKHead(la, h, query, key, versus, f"{query}→{key} {v:.2f}, {query}→{versus} "
                   f"{float(to_versus[la, h]):.2f} (mean attention over the prompts)")
            for v, la, h in cands[:most]]


# -- Markdown -----------------------------------------------------------------------------------------------------------


def _fmt(d: dict) -> str:
    return f"{d['value']:.3f} [{d['lo']:.3f}, {d['hi']:.3f}]"


def render_qk_section(data: dict, study: str = "") -> str:
    """The section as Markdown."""
    subset = (f"the first {data['n_prompts']} of the {data['n_available']} evaluation prompts (a subset, to bound "
              "the run time)" if data["n_prompts"] < data["n_available"] else f"all {data['n_prompts']} evaluation "
              "prompts")
    lines = [
        "## Why the heads attend where they do (QK attribution)", "",
        f"Each head's preference (pre-softmax score difference, LayerNorm scales frozen) decomposed exactly over "
        f"query-side × key-side sources (`circuits.attribution.qk`) on {subset}, and aggregated by role node "
        "(a feature, error node, embedding `emb` or constant part `const` at a role; 0 on prompts where absent): mean "
        "contribution with a 95% bootstrap interval over prompts. Key-side sources at the second key count with a "
        "minus sign; the key-side net table sums each source over the two keys. Removal check: the top query-side role nodes (largest positive mean) are subtracted at the "
        "query position from the stream entering the head's layer — in the frozen model the preference must move by "
        "exactly minus their summed contributions; in the live model (LayerNorm recomputed) the pattern difference "
        "should move the same way.", ""]
    if not data["heads"]:
        lines += ["No head qualified.", ""]
    for h in data["heads"]:
        lines += [f"### {h['head']}: {h['contrast']}", ""] + ([f"Chosen because: {h['why']}.", ""] if h["why"] else [])
        if not h["n"]:
            lines += ["No prompt has these roles.", ""]
            continue
        r = h["removal"]
        lines += [f"Score difference {_fmt(h['score'])}; pattern difference {_fmt(h['pattern'])} (n = {h['n']}); "
                  f"largest |Σ terms − score| {h['max_abs_gap']:.1e}.", "",
                  "| side | role node | mean contribution [95% CI] | presence |", "|---|---|---|---|"]
        for side, rows in (("query", h["query"]), ("key", h["key"])):
            for row in rows:
                lines.append(f"| {side} | `{row['node']}` | {_fmt(row)} | {row['presence']:.0%} |")
        lines += ["", "By component (every source of one dictionary or error/embedding at a role, summed):", "",
                  "| side | component | mean contribution [95% CI] |", "|---|---|---|"]
        for side, rows in (("query", h["query_groups"]), ("key", h["key_groups"])):
            for row in rows:
                lines.append(f"| {side} | `{row['node']}` | {_fmt(row)} |")
        lines += ["", "Key side net over the two keys (a source at both keys counts + at one, − at the other):", "",
                  "| key-side source | net contribution [95% CI] |", "|---|---|"]
        for row in h["key_net"]:
            lines.append(f"| `{row['node']}` | {_fmt(row)} |")
        nodes = ", ".join(f"`{n}`" for n in r["nodes"]) or "none"
        where = h["contrast"].split("→")[0]
        if r.get("live_pattern") is None:
            lines += ["", f"Removal check: no test prompt (the nodes are ranked on {r.get('n_selection', 0)} "
                          "selection prompts and removed on the others).", ""]
            continue
        sign = "−" if r["predicted_direction"] < 0 else "+" if r["predicted_direction"] > 0 else "0"
        lines += ["", f"Removal of {nodes} at {where} (ranked on {r.get('n_selection', h['n'])} prompts, removed on "
                  f"the other {r.get('n_test', h['n'])}; active on {r['prompts_with_any']} of them): predicted score "
                  f"change {_fmt(r['predicted'])}; frozen model {_fmt(r['frozen'])} (largest |frozen − predicted| "
                  f"{r['max_abs_frozen_error']:.1e}); live pattern difference change {_fmt(r['live_pattern'])}, "
                  f"predicted direction {sign}, " + (f"{r['share_in_direction']:.0%} of the prompts with a removal "
                  "move the way their own prediction says." if r["share_in_direction"] is not None else
                  "no prompt with a nonzero prediction.") + _random_text(r, where), ""]
    return "\n".join(lines) + "\n"


def _random_text(r: dict, where: str) -> str:
    """The removal check's baselines in words: the next-ranked nodes, and random nodes present at the query (none
    when the head reads nothing else there); each scored against its own prediction."""
    out = ""
    nxt = r.get("next")
    if nxt and nxt.get("nodes") and nxt["share_in_direction"] is not None:
        out += (f" Next-ranked nodes ({', '.join(f'`{n}`' for n in nxt['nodes'])}) removed the same way: predicted "
                f"{_fmt(nxt['predicted'])}, live change {_fmt(nxt['live_pattern'])}, "
                f"{nxt['share_in_direction']:.0%} of {nxt['prompts_with_any']} prompts move the way their prediction "
                "says.")
    rand = r.get("random")
    if rand is None:
        return out
    if rand["share_in_direction"] is None:
        return out + (f" Random baseline: none (no other query-side role node is present at {where}: the head's "
                      "query reads only what was removed and the constant part).")
    return out + (f" Random baseline (as many other query-side role nodes present at {where}, drawn per prompt): "
                  f"predicted {_fmt(rand['predicted'])}, live change {_fmt(rand['live_pattern'])}, "
                  f"{rand['share_in_direction']:.0%} of {rand['prompts_with_any']} prompts move the way their own "
                  "prediction says.")
