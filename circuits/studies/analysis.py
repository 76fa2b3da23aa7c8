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
* **node scores** that rank role nodes for a circuit (each summed per role node; see `SCORES`):

  - ``ig``: integrated gradients under standard mean ablation: every feature's value (inactive ones included) and
    every error's is interpolated between its reference mean and its live value, ``v = mean + g (live − mean)``,
    and ``∫₀¹ ∂m/∂g`` is the node's share of ``m(model) − m(all mean-ablated)`` (the shares sum to it as the
    number of steps grows). Faithfulness measures exactly that ablation;
  - ``atp``: attribution patching (Nanda 2023; Kramár et al. 2024), the first-order estimate of the same share:
    ``(live − mean) · ∂m/∂v`` at the live point (IG with one step at g = 1);
  - ``act_grad``: activation × gradient, ``live · ∂m/∂v`` (a zero baseline; live model, not frozen);
  - ``influence``: the attribution graph's normalised influence on the target (`circuits.pruning.influence`, the
    score that pruning keeps nodes by); unsigned, active features only;

  and ``presence``: on which role nodes each feature is active (for the stratified random baseline).

Pass 2 (`evaluate_prompt`): the metric with each circuit of the curves kept and everything else ablated under its
convention (`circuits.studies.ablate`: batched forward passes, live attention and LayerNorm), the study's checks,
and (on the first prompts) the aggregated edges among the circuit's role nodes.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from circuits.attribution import Contrast, attribute
from circuits.graph import FEATURE_KINDS
from circuits.interventions import Ablation, run_edited
from circuits.pruning import influence, total_effects
from circuits.studies.ablate import circuit_metrics
from circuits.studies.base import PreparedPrompt, RoleKey

SCORES = ("ig", "atp", "act_grad", "influence")


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
    ig, record["ig_empty"], record["ig_errors"] = integrated_gradients(rm, cache, pp, ablation, ig_steps)
    atp, _ = gate_gradients(rm, cache, pp, ablation)
    act_grad, _ = gate_gradients(rm, cache, pp, Ablation("zero"))
    record["scores"] = {"ig": _role_tables(rm, pp, ig), "atp": _role_tables(rm, pp, atp),
                        "act_grad": _role_tables(rm, pp, act_grad),
                        "influence": _role_tables(rm, pp, _graph_table(rm, graph, influence(graph).float()))}
    record["presence"] = _role_tables(rm, pp, {n: (c != 0).float() for n, c in cache.codes.items()}, reduce="any")
    return record


def _graph_table(rm, graph, values: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per dictionary, a [pos, d_sae] table of a per-graph-node value (features only; 0 elsewhere)."""
    by_site = {(f"{d.cfg.site}_feature", d.cfg.layer): d for d in rm.dictionaries}
    n_pos = max(n.pos for n in graph.nodes) + 1
    out = {d.cfg.name: torch.zeros(n_pos, d.d_sae) for d in rm.dictionaries}
    for row, n in enumerate(graph.nodes):
        d = by_site.get((n.kind, n.layer))
        if d is not None:
            out[d.cfg.name][n.pos, n.index] += float(values[row])
    return out


def _role_tables(rm, pp: PreparedPrompt, tables: dict[str, torch.Tensor], reduce: str = "sum"
                 ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """[pos, d_sae] tables → per dictionary the nonzero entries of the [role, d_sae] sums (or any-of, for
    presence) as (flat index into role × d_sae, value) — small to send between processes."""
    n_roles = int(pp.role_index.max()) + 1
    out = {}
    for name, t in tables.items():
        t = t[: len(pp.roles)].float()
        if reduce == "any":
            t = (t != 0).float()
        summed = torch.zeros(n_roles, t.shape[1]).index_add_(0, pp.role_index, t)
        if reduce == "any":
            summed = (summed > 0).float()
        flat = summed.flatten()
        idx = torch.nonzero(flat).flatten()
        out[name] = (idx, flat[idx].clone())
    return out


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
        if getattr(d, "clt_layers", None) is not None:  # a CLT layer: the features of every layer ≤ it write here
            ups = {u: cache.codes[d.clt_layers[u].cfg.name].to(d.W_enc.dtype) for u in range(d.cfg.layer)}
            feat = d.reconstruct(codes.to(d.W_enc.dtype), None, ups) - d.b_dec
        else:
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


def gate_gradients(rm, cache, pp: PreparedPrompt, ablation: Ablation, alpha: float = 1.0
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """∂m/∂g of every feature gate ([pos, d_sae] per dictionary) and error gate ([pos]) at g = `alpha` everywhere,
    with ``v = ablated + g (live − ablated)``. At g = 1 this is ``(live − ablated) · ∂m/∂v``: AtP for mean values,
    activation × gradient for zero ablation."""
    gates = {n: (torch.full(c.shape, alpha).requires_grad_(True), torch.full((cache.n_pos,), alpha).requires_grad_(True))
             for n, c in cache.codes.items()}
    with torch.enable_grad():
        logits = run_edited(rm, cache, gates=gates, ablation=ablation)[0]
        flat = [t for n in gates for t in gates[n]]
        grads = torch.autograd.grad(pp.metric(logits), flat)
    names = list(gates)
    return ({n: grads[2 * j] for j, n in enumerate(names)}, {n: grads[2 * j + 1] for j, n in enumerate(names)})


def integrated_gradients(rm, cache, pp: PreparedPrompt, ablation: Ablation, steps: int
                         ) -> tuple[dict[str, torch.Tensor], float, dict[RoleKey, float]]:
    """IG of the metric over node gates (0 = ablated, 1 = live; every feature, active or not, and every error),
    midpoint rule: ([pos, d_sae] feature scores per dictionary, m(all nodes ablated), error scores per role node).
    With `ablation` the reference means this is standard mean ablation (see `circuits.studies.ablate`)."""
    feats: dict[str, torch.Tensor] = {n: torch.zeros(c.shape) for n, c in cache.codes.items()}
    errs: dict[str, torch.Tensor] = {n: torch.zeros(cache.n_pos) for n in cache.codes}
    for k in range(steps):
        f, e = gate_gradients(rm, cache, pp, ablation, (k + 0.5) / steps)
        for n in feats:
            feats[n] += f[n] / steps
            errs[n] += e[n] / steps
    by_name = {d.cfg.name: d for d in rm.dictionaries}
    err_out: dict[RoleKey, float] = defaultdict(float)
    for n, eg in errs.items():
        d = by_name[n]
        for p, v in enumerate(eg.tolist()):
            err_out[(f"{d.cfg.site}_error", d.cfg.layer, pp.roles[p], -1)] += v
    with torch.no_grad():
        none = ({k: torch.zeros_like(v, dtype=torch.bool) for k, v in cache.codes.items()},
                {k: torch.zeros(cache.n_pos, dtype=torch.bool) for k in cache.codes})
        empty = float(pp.metric(run_edited(rm, cache, keep=none, ablation=ablation)[0]))
    return feats, empty, dict(err_out)


@torch.no_grad()
def evaluate_prompt(rm, pp: PreparedPrompt, ablation: Ablation, curve: list, circuit: list[RoleKey], checks: list,
                    check_context: dict, edges: bool = False) -> dict:
    """Pass 2 for one prompt: the metric for each `Circuit` of the curves, the checks, and (if `edges`) the
    aggregated edges among the circuit's role nodes."""
    cache = rm.run(pp.tokens)
    record: dict = {"index": pp.index, "metric": float(pp.metric(cache.logits))}
    values = circuit_metrics(rm, cache, pp, curve, ablation)
    record["curve"] = {c.label: v for c, v in zip(curve, values, strict=True)}
    record["edges"] = circuit_edges(rm, cache, pp, set(circuit)) if edges else {}
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
