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
  discrepancy over prompts.
* **live**: the same vectors are subtracted at END from the unfrozen model's residual stream entering layer l
  (LayerNorm recomputed); the change of the attention pattern ``A[END, a] − A[END, b]`` is reported with an
  interval, with the predicted direction (the sign of the frozen change) and the share of prompts that move that
  way.
* **random baseline**: on each prompt, as many other query-side role nodes present at END as the top nodes removed
  there (constant parts excluded), drawn at random (seeded), removed the same way: their live change and the share
  of those prompts on which it goes the way the top nodes' removal was predicted to go on that prompt. A share of
  60% means little when random removals reach 55%.

Everything is deterministic: prompts in the given order, role nodes sorted by value then by name, seeded bootstraps.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from circuits.attribution.qk import explain_attention, stream_sources
from circuits.attribution.sources import collect_sources
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


@torch.no_grad()
def qk_section(rm, prepared: list, heads: list[QKHead], seed: int = 0, *, n_prompts: int | None = None,
               top: int = TOP_NODES, remove: int = REMOVE) -> dict:
    """The QK decomposition of each head in `heads`, aggregated over `prepared` prompts (the first `n_prompts` of
    them when given), with the intervention check of the module docstring. JSON-serialisable; deterministic."""
    prompts = list(prepared[:n_prompts] if n_prompts else prepared)
    per_head: dict[str, dict] = {h.name + ":" + h.contrast: {"q": [], "k": [], "value": [], "pattern": [],
                                                             "gap": 0.0, "index": []} for h in heads}
    for i, pp in enumerate(prompts):
        cache = rm.run(pp.tokens)
        src = collect_sources(rm, cache)
        for spec in heads:
            where = _positions(pp, spec)
            if where is None:
                continue
            p, a, b = where
            qk = explain_attention(rm, cache, spec.layer, spec.head, p, (a, b), sources=src)
            rec = per_head[spec.name + ":" + spec.contrast]
            q: dict[str, float] = defaultdict(float)
            for m in qk.query_marginals():
                q[role_node(m.node, spec.query)] += m.contribution
            k: dict[str, float] = defaultdict(float)
            for m in qk.key_marginals():
                k[role_node(m.node, pp.roles[m.pos])] += m.contribution
            rec["q"].append(dict(q))
            rec["k"].append(dict(k))
            rec["value"].append(qk.value)
            rec["pattern"].append(float(qk.pattern[a] - qk.pattern[b]))
            rec["gap"] = max(rec["gap"], abs(qk.total() - qk.value))
            rec["index"].append(i)
    # the removal check: each head's top supporting query-side role nodes (constant parts cannot be removed)
    removals: dict[str, list[str]] = {}
    for key, rec in per_head.items():
        qmeans = _means(rec["q"]) if rec["q"] else {}
        removals[key] = [k for k in sorted(qmeans, key=lambda k: (-qmeans[k], k))
                         if qmeans[k] > 0 and not k.startswith("const@")][:remove]
        rec["checks"] = []
    import random

    rng = random.Random(f"qk-removal-{seed}")
    for rec in per_head.values():
        rec["random_checks"] = []
    for i, pp in enumerate(prompts):
        todo = [(spec, per_head[spec.name + ":" + spec.contrast]) for spec in heads]
        todo = [(spec, rec) for spec, rec in todo if i in rec["index"]]
        if not todo:
            continue
        cache = rm.run(pp.tokens)
        src = collect_sources(rm, cache)
        for spec, rec in todo:
            p, a, b = _positions(pp, spec)
            qm = rec["q"][rec["index"].index(i)]
            chosen = removals[spec.name + ":" + spec.contrast]
            rec["checks"].append(_removal(rm, cache, src, spec, p, a, b, chosen, qm))
            # as many as the top nodes removed on this prompt (those present here), scored against its prediction
            n_here = sum(1 for k in chosen if qm.get(k, 0.0) != 0)
            others = sorted(k for k, v in qm.items() if v != 0 and k not in chosen and not k.startswith("const@"))
            drawn = rng.sample(others, min(n_here, len(others)))
            rand = _removal(rm, cache, src, spec, p, a, b, drawn, qm)
            rand["top_predicted"] = rec["checks"][-1]["predicted"]
            rec["random_checks"].append(rand)
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
        rand = rec["random_checks"]
        rand_moved = [c for c in rand if c["removed"]]
        out_heads.append({
            "head": spec.name, "layer": spec.layer, "h": spec.head, "contrast": spec.contrast, "why": spec.why,
            "n": len(rec["value"]), "score": _iv(rec["value"], seed), "pattern": _iv(rec["pattern"], seed),
            "max_abs_gap": rec["gap"], "query": qtab, "key": ktab, "query_groups": qgroups, "key_groups": kgroups,
            "key_net": knet,
            "removal": {
                "nodes": removed, "prompts_with_any": len(moved),
                "predicted": _iv(pred, seed), "frozen": _iv([c["frozen"] for c in checks], seed),
                "max_abs_frozen_error": max(abs(c["frozen"] - c["predicted"]) for c in checks),
                "live_pattern": _iv(live, seed), "predicted_direction": direction,
                "share_in_direction": (sum(1 for c in moved if np.sign(c["live_pattern"]) == np.sign(c["predicted"]))
                                       / len(moved)) if moved else float("nan"),
                "random": {
                    "live_pattern": _iv([c["live_pattern"] for c in rand], seed),
                    "prompts_with_any": len(rand_moved),
                    "share_in_direction": (sum(1 for c in rand_moved if np.sign(c["live_pattern"])
                                               == np.sign(c["top_predicted"])) / len(rand_moved))
                    if rand_moved else float("nan"),
                },
            },
        })
    return {"n_prompts": len(prompts), "n_available": len(prepared), "heads": out_heads}


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
    attends S2 more than IO."""
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
        out.append(QKHead(layer, head, "END", "IO" if io_first else "S2", "S2" if io_first else "IO",
                          f"role: {row['role']}; END→IO {att['end_io']['value']:.2f}, END→S1 "
                          f"{att['end_s1']['value']:.2f}, END→S2 {att['end_s2']['value']:.2f}"))
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
        lines += ["", f"Removal of {nodes} at {h['contrast'].split('→')[0]} (active on {r['prompts_with_any']} of "
                  f"{h['n']} prompts): predicted score change {_fmt(r['predicted'])}; frozen model {_fmt(r['frozen'])} "
                  f"(largest |frozen − predicted| {r['max_abs_frozen_error']:.1e}); live pattern difference change "
                  f"{_fmt(r['live_pattern'])}, predicted direction "
                  f"{'−' if r['predicted_direction'] < 0 else '+' if r['predicted_direction'] > 0 else '0'}, "
                  f"{r['share_in_direction']:.0%} of the prompts with a removal move that way."
                  + _random_text(r, h["contrast"].split("→")[0]), ""]
    return "\n".join(lines) + "\n"


def _random_text(r: dict, where: str) -> str:
    """The removal check's random baseline, in words (none when the head reads nothing else there)."""
    rand = r.get("random")
    if rand is None:
        return ""
    if not rand["prompts_with_any"]:
        return (f" Random baseline: none (no other query-side role node is present at {where}: the head's query "
                "reads only what was removed and the constant part).")
    return (f" Random baseline (as many other query-side role nodes present at {where}, drawn per prompt): live "
            f"change {_fmt(rand['live_pattern'])}, {rand['share_in_direction']:.0%} of {rand['prompts_with_any']} "
            "prompts move the predicted way.")
