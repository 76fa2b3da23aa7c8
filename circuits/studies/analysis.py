"""Per-prompt analysis for case studies (runs in worker processes; everything returned is small and picklable).

Pass 1, for each prompt (`analyse_prompt`):

* the **attribution graph** for the contrast ``answer − wrong`` (every node, every edge), and each node's signed
  **total effect** on the metric (`circuits.pruning.total_effects`: gradient × activation in the frozen local
  replacement model), summed per role node;
* **head traffic**: each edge into an attention feature, split by the head that reads it (the graph's per-head
  parts), weighted by its target's effect per unit — how much of the metric flows from role X to role Y through
  head h;
* a **roll-up to components**: the gradient of the metric with respect to each dictionary's output (frozen model)
  splits every attention feature's and error's effect exactly over the heads it writes through (the output lives in
  z-space: concatenated heads), and gives each MLP layer's share;
* **integrated gradients under mean ablation**: every node's value is interpolated between its group mean and its
  live value, ``v = mean + g (live − mean)``, and ``∫₀¹ ∂m/∂g`` is the node's share of ``m(model) − m(all
  ablated)`` (the shares sum to it as the number of steps grows). This score ranks nodes for the circuit, because
  faithfulness measures exactly that ablation.

Pass 2 (`evaluate_prompt`): the metric with circuits of growing size kept and everything else mean-ablated (live
attention and LayerNorm), the aggregated edges among the circuit's role nodes, and the study's checks.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from circuits.attribution import Contrast, attribute
from circuits.graph import FEATURE_KINDS
from circuits.interventions import Ablation, hold_inactive, run_edited
from circuits.pruning import total_effects
from circuits.studies.base import PreparedPrompt, RoleKey, keep_masks


def role_keys(graph, pp: PreparedPrompt) -> list[RoleKey]:
    """The role node of every graph node (tokens: index -1; the target: its own kind)."""
    out = []
    for n in graph.nodes:
        role = pp.roles[n.pos] if 0 <= n.pos < len(pp.roles) else "END"
        index = n.index if n.kind in FEATURE_KINDS else -1
        out.append((n.kind, n.layer, role, index))
    return out


def _sum_by_key(keys: list[RoleKey], values: torch.Tensor, kinds: tuple[str, ...]) -> dict[RoleKey, float]:
    out: dict[RoleKey, float] = defaultdict(float)
    for k, v in zip(keys, values.tolist(), strict=True):
        if k[0] in kinds:
            out[k] += v
    return dict(out)


def analyse_prompt(rm, pp: PreparedPrompt, ablation: Ablation, ig_steps: int = 4) -> dict:
    """Pass 1 for one prompt (see the module docstring)."""
    cache = rm.run(pp.tokens)
    graph = attribute(rm, pp.tokens, Contrast(pp.answer, pp.wrong), cache=cache)
    effects = total_effects(graph)
    keys = role_keys(graph, pp)
    record: dict = {
        "index": pp.index,
        "n_tokens": int(pp.tokens.shape[0]),
        "metric": float(pp.metric(cache.logits)),
        "graph_nodes": graph.n_nodes,
        "graph_edges": graph.n_edges,
        "effects": _sum_by_key(keys, effects, FEATURE_KINDS + ("attn_error", "mlp_error", "token")),
    }
    # head traffic: edges into attention features, split by reading head, weighted by the target's effect per unit
    traffic: dict[tuple[int, int, str, str], float] = {}
    if graph.head_weights is not None and graph.n_edges:
        tgt, src = graph.edge_index
        is_attn = torch.tensor([n.kind == "attn_feature" for n in graph.nodes])
        e = torch.nonzero(is_attn[tgt]).flatten()
        if len(e):
            per_unit = (effects[tgt[e]] / graph.activations[tgt[e]].to(effects.dtype)).to(graph.head_weights.dtype)
            pos = torch.tensor([max(n.pos, 0) for n in graph.nodes])
            layer = torch.tensor([max(n.layer, 0) for n in graph.nodes])
            R = int(pp.role_index.max()) + 1
            key = (layer[tgt[e]] * R + pp.role_index[pos[src[e]]]) * R + pp.role_index[pos[tgt[e]]]
            H = graph.head_weights.shape[1]
            sums = torch.zeros(rm.n_layers * R * R, H, dtype=torch.float64).index_add_(
                0, key, (graph.head_weights[e] * per_unit[:, None]).double())
            role_name = {int(i): r for i, r in zip(pp.role_index.tolist(), pp.roles, strict=True)}
            for k, h in torch.nonzero(sums).tolist():
                ly, rr = divmod(k, R * R)
                rs, rt = divmod(rr, R)
                traffic[(ly, h, role_name[rs], role_name[rt])] = float(sums[k, h])
    record["traffic"] = traffic
    record["components"] = component_rollup(rm, cache, pp)
    record["ig"], record["ig_empty"] = integrated_gradients(rm, cache, pp, ablation, ig_steps)
    return record


def component_rollup(rm, cache, pp: PreparedPrompt) -> dict[tuple[str, int, int, str], tuple[float, float]]:
    """(site "attn"/"mlp", layer, head or -1, role) → (effect of its features, effect of its error node) on the
    metric: gradient of the metric w.r.t. each dictionary output (frozen model) · that output's parts."""
    outputs: dict = {}
    with torch.enable_grad():
        logits, _, _ = run_edited(rm, cache, frozen=True, outputs=outputs)
        names = list(outputs)
        grads = torch.autograd.grad(pp.metric(logits), [outputs[n] for n in names])
    out: dict[tuple[str, int, int, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    by_name = {d.cfg.name: d for d in rm.dictionaries}
    for name, g in zip(names, grads, strict=True):
        d = by_name[name]
        codes = cache.codes[name]
        feat = (d.decode(codes.to(d.W_enc.dtype)) - d.decode(torch.zeros_like(codes[:1]).to(d.W_enc.dtype)))
        err = cache.errors[name]
        g = g.to(feat.dtype)
        if d.cfg.site == "attn":
            H = rm.cfg.n_heads
            fp = (feat * g).reshape(len(codes), H, -1).sum(-1)  # [pos, H]
            ep = (err.to(g.dtype) * g).reshape(len(codes), H, -1).sum(-1)
            fp, ep = fp.detach().tolist(), ep.detach().tolist()
            for p, role in enumerate(pp.roles):
                for h in range(H):
                    slot = out[("attn", d.cfg.layer, h, role)]
                    slot[0] += fp[p][h]
                    slot[1] += ep[p][h]
        else:
            fp, ep = (feat * g).sum(-1).detach().tolist(), (err.to(g.dtype) * g).sum(-1).detach().tolist()
            for p, role in enumerate(pp.roles):
                slot = out[("mlp", d.cfg.layer, -1, role)]
                slot[0] += fp[p]
                slot[1] += ep[p]
    return {k: (v[0], v[1]) for k, v in out.items()}


def integrated_gradients(rm, cache, pp: PreparedPrompt, ablation: Ablation, steps: int
                         ) -> tuple[dict[RoleKey, float], float]:
    """IG of the metric over node gates (0 = ablated, 1 = live), midpoint rule; returns the per-role-node scores
    and m(all nodes ablated). Features inactive on the prompt stay at 0 along the whole path (`hold_inactive`)."""
    ablation = hold_inactive(ablation, cache)
    acc: dict[str, list[torch.Tensor]] = {}
    active = {n: cache.codes[n] != 0 for n in cache.codes}
    for k in range(steps):
        alpha = (k + 0.5) / steps
        gates = {}
        for n, act in active.items():
            fg = torch.where(act, torch.full(act.shape, alpha), torch.zeros(act.shape)).requires_grad_(True)
            eg = torch.full((cache.n_pos,), alpha).requires_grad_(True)
            gates[n] = (fg, eg)
        with torch.enable_grad():
            logits = run_edited(rm, cache, gates=gates, ablation=ablation)[0]
            flat = [t for n in gates for t in gates[n]]
            grads = torch.autograd.grad(pp.metric(logits), flat)
        for j, n in enumerate(gates):
            if n not in acc:
                acc[n] = [torch.zeros(active[n].shape), torch.zeros(cache.n_pos)]
            acc[n][0] += grads[2 * j] / steps
            acc[n][1] += grads[2 * j + 1] / steps
    out: dict[RoleKey, float] = defaultdict(float)
    by_name = {d.cfg.name: d for d in rm.dictionaries}
    for n, (fg, eg) in acc.items():
        d = by_name[n]
        kind = d.cfg.site
        p_idx, f_idx = torch.nonzero(active[n], as_tuple=True)
        for p, i, v in zip(p_idx.tolist(), f_idx.tolist(), fg[p_idx, f_idx].tolist(), strict=True):
            out[(f"{kind}_feature", d.cfg.layer, pp.roles[p], i)] += v
        for p, v in enumerate(eg.tolist()):
            out[(f"{kind}_error", d.cfg.layer, pp.roles[p], -1)] += v
    with torch.no_grad():
        none = ({k: torch.zeros_like(v) for k, v in active.items()},
                {k: torch.zeros(cache.n_pos, dtype=torch.bool) for k in active})
        empty = float(pp.metric(run_edited(rm, cache, keep=none, ablation=ablation)[0]))
    return dict(out), empty


@torch.no_grad()
def evaluate_prompt(rm, pp: PreparedPrompt, ablation: Ablation, curve: list[tuple[str, frozenset, bool]],
                    circuit: list[RoleKey], checks: list, check_context: dict) -> dict:
    """Pass 2 for one prompt: metric for each circuit on the curve, aggregated circuit edges, and checks."""
    cache = rm.run(pp.tokens)
    held = hold_inactive(ablation, cache)
    record: dict = {"index": pp.index, "metric": float(pp.metric(cache.logits)), "curve": {}}
    for label, keys, errors in curve:
        logits = run_edited(rm, cache, keep=keep_masks(rm, cache, pp, keys, errors), ablation=held)[0]
        record["curve"][label] = float(pp.metric(logits))
    record["edges"] = circuit_edges(rm, cache, pp, set(circuit))
    record["checks"] = {c.name: c.run(rm, cache, pp, ablation, check_context) for c in checks}
    return record


def circuit_edges(rm, cache, pp: PreparedPrompt, circuit: set[RoleKey]) -> dict[tuple[RoleKey, RoleKey], float]:
    """Edges of this prompt's graph between aggregated nodes: the circuit's feature role nodes, every error and
    token role node, and the target; summed per (source, target) role-node pair."""
    with torch.enable_grad():  # autograd edges (attention layers without an SAE) need gradients
        graph = attribute(rm, pp.tokens, Contrast(pp.answer, pp.wrong), cache=cache)
    keys = role_keys(graph, pp)
    keep = torch.tensor([k in circuit or k[0] not in FEATURE_KINDS for k in keys])
    tgt, src = graph.edge_index
    e = torch.nonzero(keep[tgt] & keep[src]).flatten()
    out: dict[tuple[RoleKey, RoleKey], float] = defaultdict(float)
    for t, s, w in zip(tgt[e].tolist(), src[e].tolist(), graph.edge_weight[e].tolist(), strict=True):
        out[(keys[s], keys[t])] += w
    return dict(out)
