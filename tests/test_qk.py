"""QK attribution (`circuits.attribution.qk`): the decomposition of an attention score is exact, names a planted
mechanism, and each source's marginal is what removing it does in the frozen model.

Reference scores come from TransformerLens itself (``attn.hook_attn_scores``), never from the module under test.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from circuits.attribution.head_routes import qk_tables, strongest_routes
from circuits.attribution.qk import explain_attention, stream_sources
from circuits.graph import Node
from circuits.model import hook_resid_pre
from circuits.replacement import AttributionError, ReplacementModel

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "When Mary and John went to the store, John gave a drink to"


def tl_scores(rm: ReplacementModel, tokens, layer: int, edits=None, frozen_cache=None) -> torch.Tensor:
    """[n_heads, pos, pos] TransformerLens' pre-softmax scores of `layer`; `edits` {pos: vector} are subtracted
    from the residual stream entering the layer (inside `rm.frozen(frozen_cache)` when given)."""
    attn = rm.model.blocks[layer].attn
    got = {}

    def subtract(act, hook):
        act = act.clone()
        for p, v in (edits or {}).items():
            act[0, p] -= v.to(act.dtype)
        return act

    def keep(act, hook):
        got["s"] = act[0].detach().clone()

    hooks = [(hook_resid_pre(layer), subtract), (attn.hook_attn_scores.name, keep)]
    with torch.no_grad(), rm.model.hooks(fwd_hooks=hooks):
        if frozen_cache is not None:
            with rm.frozen(frozen_cache):
                rm.model(tokens[None])
        else:
            rm.model(tokens[None])
    return got["s"]


@pytest.fixture(scope="module")
def variants(tiny64):
    """Replacement models of the float64 tiny model: every dictionary; no attention SAE at layer 1 (the layer
    explained); no attention SAE at layer 0 (an earlier layer: its output is one error node per position)."""
    from conftest import random_dictionaries

    model, dicts = tiny64
    no_attn1 = [d for d in dicts if not (d.cfg.kind == "attention_sae" and d.cfg.layer == 1)]
    no_attn0 = [d for d in dicts if not (d.cfg.kind == "attention_sae" and d.cfg.layer == 0)]
    return {"all": ReplacementModel(model, dicts), "no_attn_sae_L1": ReplacementModel(model, no_attn1),
            "no_attn_sae_L0": ReplacementModel(model, no_attn0),
            "transcoders_only": ReplacementModel(model, random_dictionaries(model, kinds=("transcoder",)))}


# -- exactness --------------------------------------------------------------------------------------------------------


def test_stream_is_the_sum_of_its_sources(variants):
    for rm in variants.values():
        cache = rm.run(PROMPT)
        for layer in range(rm.n_layers):
            nodes, writes, pos, constant = stream_sources(rm, cache, layer)
            total = torch.zeros_like(cache.resid_pre[layer]).index_add_(0, pos, writes) + constant
            torch.testing.assert_close(total, cache.resid_pre[layer], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["all", "no_attn_sae_L1", "no_attn_sae_L0", "transcoders_only"])
def test_terms_sum_to_the_score_float64(variants, name):
    rm = variants[name]
    cache = rm.run(PROMPT)
    p = cache.n_pos - 1
    worst = 0.0
    for layer in range(rm.n_layers):
        ref = tl_scores(rm, cache.tokens, layer)
        for head in range(rm.cfg.n_heads):
            for keys in ((0,), (3,), (p,), (2, 9), (p, 4)):
                a = explain_attention(rm, cache, layer, head, p, keys if len(keys) == 2 else keys[0])
                want = float(ref[head, p, keys[0]] - (ref[head, p, keys[1]] if len(keys) == 2 else 0))
                size = max(abs(want), 1.0)
                worst = max(worst, abs(float(a.matrix().sum()) - want) / size, abs(a.total() - want) / size,
                            abs(a.value - want) / size)
    assert worst < 1e-10, worst


def test_pattern_terms_sum_to_the_linearised_pattern_change(variants):
    rm = variants["no_attn_sae_L1"]
    cache = rm.run(PROMPT)
    p = cache.n_pos - 1
    ref = tl_scores(rm, cache.tokens, 1)[2, p, :p + 1]
    A = torch.softmax(ref, -1)
    torch.testing.assert_close(A, cache.patterns[1][2, p, :p + 1], rtol=0, atol=1e-12)
    J = torch.diag(A) - A[:, None] * A[None, :]  # ∂A_q/∂s_j
    for keys, w in (((5,), J[5]), ((5, 10), J[5] - J[10])):
        a = explain_attention(rm, cache, 1, 2, p, keys if len(keys) == 2 else keys[0], quantity="pattern")
        assert a.key_positions.unique().tolist() == list(range(p + 1))  # the softmax couples every key ≤ p
        assert abs(a.total() - float(w @ ref)) < 1e-12
        assert abs(a.value - float(w @ ref)) < 1e-12


# -- interventions in the frozen model --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["all", "no_attn_sae_L0"])
def test_removing_a_source_moves_the_score_by_its_marginal(variants, name):
    rm = variants[name]
    cache = rm.run(PROMPT)
    p, a_pos, b_pos, layer, head = cache.n_pos - 1, 2, 9, 1, 3
    nodes, writes, pos, _ = stream_sources(rm, cache, layer)
    clean = tl_scores(rm, cache.tokens, layer, frozen_cache=cache)[head, p]
    for keys in ((a_pos,), (a_pos, b_pos)):
        qk = explain_attention(rm, cache, layer, head, p, keys if len(keys) == 2 else keys[0])
        margins = {(m.node, m.pos): m.contribution for m in qk.query_marginals() + qk.key_marginals()}
        # every query-side source at p, and a few key-side ones at a
        side = [i for i, n in enumerate(nodes) if n.pos == p] + [i for i, n in enumerate(nodes) if n.pos == a_pos][:6]
        for i in side:
            s = tl_scores(rm, cache.tokens, layer, {int(pos[i]): writes[i]}, frozen_cache=cache)[head, p]
            moved = float(s[keys[0]] - clean[keys[0]])
            if len(keys) == 2:
                moved -= float(s[keys[1]] - clean[keys[1]])
            assert abs(moved + margins[(nodes[i], int(pos[i]))]) < 1e-10, (nodes[i], moved)


def test_pattern_marginal_is_the_first_order_pattern_change(variants):
    rm = variants["all"]
    cache = rm.run(PROMPT)
    p, layer, head, q = cache.n_pos - 1, 1, 0, 4
    qk = explain_attention(rm, cache, layer, head, p, q, quantity="pattern")
    nodes, writes, pos, _ = stream_sources(rm, cache, layer)
    clean = torch.softmax(tl_scores(rm, cache.tokens, layer, frozen_cache=cache)[head, p, :p + 1], -1)
    # a source at p is on both sides: it writes the query at p and the key at p, which the pattern also reads
    key_side = {(m.node, m.pos): m.contribution for m in qk.key_marginals()}
    eps = 1e-6
    for m in qk.query_marginals()[:4]:
        if m.node is None:
            continue
        i = nodes.index(m.node)
        s = tl_scores(rm, cache.tokens, layer, {p: eps * writes[i]}, frozen_cache=cache)[head, p, :p + 1]
        moved = float(torch.softmax(s, -1)[q] - clean[q]) / eps
        predicted = m.contribution + key_side[(m.node, p)]
        assert abs(moved + predicted) < 1e-5 * max(1.0, abs(predicted)), (m, moved, predicted)
    for m in [m for m in qk.key_marginals() if m.node is not None and m.pos < p][:4]:  # key side only
        i = nodes.index(m.node)
        s = tl_scores(rm, cache.tokens, layer, {m.pos: eps * writes[i]}, frozen_cache=cache)[head, p, :p + 1]
        moved = float(torch.softmax(s, -1)[q] - clean[q]) / eps
        assert abs(moved + m.contribution) < 1e-5 * max(1.0, abs(m.contribution)), (m, moved)


# -- a planted mechanism and a negative control -----------------------------------------------------------------------


def induction_model():
    """A hand-built two-layer attention-only induction model (float64, LayerNorm). Residual blocks: token one-hot
    [0, V), previous token [V, 2V), position one-hot [2V, 2V + n_ctx). Head L0.H0 attends to the previous position
    and copies its token into the previous-token block; head L1.H0 matches the query's token against the keys'
    previous-token block."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    V = n_ctx = 16
    cfg = HookedTransformerConfig(n_layers=2, d_model=2 * V + n_ctx, n_heads=1, d_head=V, d_vocab=V, n_ctx=n_ctx,
                                  attn_only=True, normalization_type="LN", dtype=torch.float64, act_fn="relu")
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if name.endswith(".w"):
                p.fill_(1.0)
        eye = torch.eye(V, dtype=torch.float64)
        model.embed.W_E[:, :V] = eye
        model.pos_embed.W_pos[:, 2 * V:] = torch.eye(n_ctx, dtype=torch.float64)
        a0, a1 = model.blocks[0].attn, model.blocks[1].attn
        for i in range(1, n_ctx):
            a0.W_Q[0, 2 * V + i, i - 1] = 4.0  # query at i looks for key position i - 1
        a0.W_K[0, 2 * V:, :] = torch.eye(n_ctx, dtype=torch.float64)
        a0.W_V[0, :V, :] = eye  # copy the token ...
        a0.W_O[0, :, V:2 * V] = eye  # ... into the previous-token block
        a1.W_Q[0, :V, :] = 4.0 * eye  # the query's token ...
        a1.W_K[0, V:2 * V, :] = eye  # ... against each key's previous token
    return model


def test_planted_induction_pair_comes_first():
    rm = ReplacementModel(induction_model(), [])
    tokens = torch.tensor([0, 3, 7, 1, 9, 4, 3, 7, 1, 9, 4])
    cache = rm.run(tokens)
    p, induction = 8, 4  # token 1 at 8; after its earlier copy (pos 3) comes pos 4
    assert float(cache.patterns[1][0, p, induction]) > 0.9  # the planted mechanism works
    planted = (Node("token", -1, p, 1), Node("attn_error", 0, induction, -1))
    for keys in (induction, (induction, 3)):
        top = explain_attention(rm, cache, 1, 0, p, keys).top(3)
        assert (top[0].query, top[0].key) == planted, top
        assert top[0].contribution > 0 and abs(top[0].contribution) > 3 * abs(top[1].contribution), top
    keys = explain_attention(rm, cache, 1, 0, p, induction).key_marginals()
    assert keys[0].node == planted[1]


def test_a_source_orthogonal_to_the_query_weights_gets_zero(tiny64):
    model, dicts = tiny64
    rm = ReplacementModel(model, dicts)
    cache = rm.run(PROMPT)
    p, layer, head = cache.n_pos - 1, 1, 2
    nodes, writes, pos, _ = stream_sources(rm, cache, layer)
    target = Node("token", -1, p, int(cache.tokens[p]))
    v = writes[nodes.index(target)]
    gamma, _ = rm.ln_weights("ln1", layer)
    u = (v - v.mean()) / cache.ln1_scale[layer][p] * gamma  # the token's share of ln1's output
    u = u / u.norm()
    blind = copy.deepcopy(model)
    with torch.no_grad():  # remove u from W_Q's input space: W_Q ← (I − u uᵀ) W_Q
        W = blind.blocks[layer].attn.W_Q
        W[head] -= torch.outer(u, u @ W[head])
    rm_blind = ReplacementModel(blind, dicts)
    qk = explain_attention(rm_blind, rm_blind.run(PROMPT), layer, head, p, 3)
    row = qk.query_nodes.index(target)
    assert float(qk.matrix()[row].abs().max()) < 1e-12
    marg = {m.node: m.contribution for m in qk.query_marginals()}
    assert abs(marg[target]) < 1e-12
    assert max(abs(c) for n, c in marg.items() if n != target) > 1e-3  # everything else still counts


# -- the organism (float32) -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def organism():
    from circuits import load_dictionaries, load_model

    model, _ = load_model("organism")
    return model, load_dictionaries("organism", model)


@pytest.mark.parametrize("drop", [None, "attn_sae_L3", "attn_sae_L1"])
def test_organism_terms_sum_to_the_score_float32(organism, drop):
    model, dicts = organism
    rm = ReplacementModel(model, [d for d in dicts if d.cfg.name != drop])
    cache = rm.run(PROMPT)
    p, io, s2 = cache.n_pos - 1, 2, 10
    from circuits.attribution.sources import collect_sources

    src = collect_sources(rm, cache)
    worst = 0.0
    for layer in range(rm.n_layers):
        ref = tl_scores(rm, cache.tokens, layer).double()
        for head in range(rm.cfg.n_heads):
            for keys in ((io,), (s2,), (0,), (io, s2)):
                a = explain_attention(rm, cache, layer, head, p, keys if len(keys) == 2 else keys[0], sources=src)
                want = float(ref[head, p, keys[0]] - (ref[head, p, keys[1]] if len(keys) == 2 else 0))
                # float32 rounding is relative to the size the score is formed from: |q| |k| / attn_scale
                size = max(abs(want), float(a.query_vectors.sum(0).norm() * a.key_vectors.sum(0).norm()))
                worst = max(worst, abs(a.total() - want) / size, abs(a.value - want) / size)
    assert worst < 1e-5, worst


def test_organism_removing_top_query_sources_moves_the_preference_by_their_marginals(organism):
    """IOI on the organism: removing a top query-side source of L3.H0's END→IO − END→S2 preference (frozen model)
    moves the preference by exactly its marginal, in float32."""
    model, dicts = organism
    rm = ReplacementModel(model, dicts)
    cache = rm.run(PROMPT)
    p, io, s2, layer, head = cache.n_pos - 1, 2, 10, 3, 0
    qk = explain_attention(rm, cache, layer, head, p, (io, s2))
    nodes, writes, pos, _ = stream_sources(rm, cache, layer)
    clean = tl_scores(rm, cache.tokens, layer, frozen_cache=cache)[head, p].double()
    for m in [m for m in qk.query_marginals() if m.node is not None][:5]:
        s = tl_scores(rm, cache.tokens, layer, {p: writes[nodes.index(m.node)]}, frozen_cache=cache)[head, p].double()
        moved = float((s[io] - clean[io]) - (s[s2] - clean[s2]))
        assert abs(moved + m.contribution) < 1e-4 * max(1.0, abs(qk.value)), (m, moved)


# -- API, graph files, CLI --------------------------------------------------------------------------------------------


def test_bad_arguments_are_one_clear_error(variants):
    rm = variants["all"]
    cache = rm.run(PROMPT)
    for args, needle in (((2, 0, 5, 3), "layer 2"), ((0, 4, 5, 3), "head 4"), ((0, 0, 99, 3), "query position"),
                         ((0, 0, 5, 6), "causal"), ((0, 0, 5, (3, 3)), "two different"),
                         ((0, 0, 5, (1, 2, 3)), "a pair")):
        with pytest.raises(AttributionError, match=needle):
            explain_attention(rm, cache, *args)
    with pytest.raises(AttributionError, match="unknown quantity"):
        explain_attention(rm, cache, 0, 0, 5, 3, quantity="logit")


def test_top_and_marginals_agree_with_the_table(variants):
    rm = variants["all"]
    cache = rm.run(PROMPT)
    qk = explain_attention(rm, cache, 1, 1, 12, (3, 7))
    M = qk.matrix()
    top = qk.top(5)
    assert [abs(t.contribution) for t in top] == sorted(M.abs().flatten().tolist(), reverse=True)[:5]
    assert top == sorted(top, key=lambda t: -abs(t.contribution))
    qm = {m.node: m.contribution for m in qk.query_marginals()}
    assert all(abs(qm[n] - float(M[i].sum())) < 1e-12 for i, n in enumerate(qk.query_nodes))
    assert abs(sum(m.contribution for m in qk.key_marginals()) - qk.value) < 1e-10
    assert qk.score == pytest.approx(qk.value)
    assert {int(p) for p in qk.key_positions} == {3, 7}
    # constants=False lists pairs of two sources only, never a masked constant pair as a zero (even when k asks for
    # more pairs than there are); with constants, the k largest of all pairs
    n_sources = sum(q is not None for q in qk.query_nodes) * sum(c is not None for c in qk.key_nodes)
    only = qk.top(n_sources + 5, constants=False)
    assert len(only) == n_sources and all(t.query is not None and t.key is not None for t in only)
    assert len(qk.top(n_sources + 5)) == min(n_sources + 5, M.numel()) > n_sources


def test_graph_with_qk_tables_round_trips_and_version_2_still_reads(tmp_path, variants):
    from circuits import export
    from circuits.attribution import attribute

    rm = variants["all"]
    cache = rm.run(PROMPT)
    graph = attribute(rm, PROMPT, cache=cache)
    routes = strongest_routes(graph, 3)
    assert len(routes) == 3 and routes[0].strength >= routes[1].strength >= routes[2].strength > 0
    tables = qk_tables(rm, cache, graph, 3, top=5)
    assert [(t["layer"], t["head"], t["query_pos"], t["keys"]) for t in tables] == [
        (r.layer, r.head, r.query_pos, [r.key_pos]) for r in routes]
    assert all(abs(t["terms_total"] - t["value"]) < 1e-10 and len(t["pairs"]) == 5 for t in tables)
    graph.metadata["qk"] = tables
    path = export.write_json(graph, tmp_path / "g.json")
    data = json.loads(path.read_text())
    assert data["schema_version"] == export.SCHEMA_VERSION >= 3  # 4 (issue 21) kept every version-3 field
    assert export.read_json(path).metadata["qk"] == json.loads(json.dumps(tables))
    del data["metadata"]["qk"]
    data["schema_version"] = 2  # a file written before version 3
    old = export.loads(json.dumps(data), "old.json")
    assert old.n_edges == graph.n_edges and "qk" not in old.metadata
    data["schema_version"] = 3
    data["metadata"]["qk"] = [{"layer": 0}]
    with pytest.raises(export.GraphFileError, match="qk"):
        export.loads(json.dumps(data), "bad.json")


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "circuits.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"}, timeout=300)


@pytest.mark.parametrize("args,needle", [
    (["--head", "3", "--key", "2"], "--head '3'"),
    (["--head", "3.x", "--key", "2"], "LAYER.HEAD"),
    (["--head", "3.0", "--key", "-1"], "--key -1"),
    (["--head", "3.0", "--key", "2", "--versus", "2"], "must differ"),
    (["--head", "3.0", "--key", "9", "--query", "4"], "causal"),
    (["--head", "3.0", "--key", "2", "--top", "0"], "--top 0"),
    (["--head", "3.0", "--key", "2", "--json", "README.md/x.json"], "--json"),
])
def test_cli_attention_options_fail_before_the_model_loads(args, needle):
    proc = run_cli("attention", PROMPT, "--model", "nosuch", *args)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert err.splitlines()[-1].startswith("circuits: error:") and needle in err.splitlines()[-1], err


def test_cli_attention_on_the_organism(tmp_path):
    out = tmp_path / "qk.json"
    proc = run_cli("attention", PROMPT, "--head", "3.0", "--key", "2", "--versus", "10", "--top", "4", "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert "L3.H0 14 ' to' → 2 ' Mary' − 14 ' to' → 10 ' John'" in proc.stdout
    data = json.loads(out.read_text())
    assert data["keys"] == [2, 10] and len(data["pairs"]) == 4
    assert abs(data["terms_total"] - data["value"]) < 1e-4 * max(1.0, abs(data["value"]))
    proc = run_cli("attention", PROMPT, "--head", "9.0", "--key", "2")
    assert proc.returncode == 2 and "layer 9 is out of range: the model has 4 layers" in proc.stderr


def test_autograd_graphs_have_no_head_routes(variants):
    from circuits.attribution import attribute

    rm = variants["all"]
    assert strongest_routes(attribute(rm, PROMPT, method="autograd"), 3) == []


def test_cli_trace_qk_attaches_tables_to_the_graph(tmp_path):
    from circuits import export

    out = tmp_path / "g.json"
    proc = run_cli("trace", PROMPT, "--target", " Mary", "--contrast", " John", "--qk", "--qk-heads", "2",
                   "--json", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    graph = export.read_json(out)
    tables = graph.metadata["qk"]
    assert len(tables) == 2 and tables[0]["route_strength"] >= tables[1]["route_strength"] > 0
    assert all(abs(t["terms_total"] - t["value"]) < 1e-4 * max(1.0, abs(t["value"])) for t in tables)
    assert sum(line.startswith("QK L") for line in proc.stdout.splitlines()) == 2


# -- helpers for the explorer's "why this attention" panel -----------------------------------------------------------


def test_key_net_sums_each_source_over_both_keys(variants):
    """`key_net`: every key-side source's marginals at the two keys of a contrast, summed per (kind, layer, index);
    the nets still sum to the preference, and a source at both keys is one entry with its two parts."""
    rm = variants["all"]
    cache = rm.run(PROMPT)
    qk = explain_attention(rm, cache, 1, 1, 12, (3, 7))
    net = qk.key_net()
    marg = qk.key_marginals()
    assert abs(sum(n.contribution for n in net) - qk.value) < 1e-10
    assert net == sorted(net, key=lambda n: -abs(n.contribution))
    assert sum(len(n.parts) for n in net) == len(marg)  # every marginal in exactly one group
    for n in net:
        assert abs(n.contribution - sum(m.contribution for m in n.parts)) < 1e-12
        assert [m.pos for m in n.parts] == sorted(m.pos for m in n.parts)
        for m in n.parts:
            assert (None, -1, -1) == (n.kind, n.layer, n.index) if m.node is None else \
                (m.node.kind, m.node.layer, m.node.index) == (n.kind, n.layer, n.index)
    const = next(n for n in net if n.kind is None)
    assert const.name == "const" and [m.pos for m in const.parts] == [3, 7]
    both = [n for n in net if n.kind is not None and len(n.parts) == 2]
    assert both and all("@" not in n.name for n in both)
    # by hand: the constant parts' net is their key marginals at 3 and 7 summed
    by_hand = sum(m.contribution for m in marg if m.node is None)
    assert abs(const.contribution - by_hand) < 1e-12


def test_head_shares_and_default_route(variants):
    """`head_shares` adds up |per-head part| of a node's incoming edges by head and source position (checked
    edge by edge); `default_route` is its largest head and that head's largest position; autograd graphs and
    non-attention nodes have none."""
    from circuits.attribution import attribute
    from circuits.attribution.head_routes import default_route, edge_routes, head_shares

    rm = variants["all"]
    graph = attribute(rm, PROMPT)
    node = next(n for n in reversed(graph.nodes) if n.kind == "attn_feature" and n.layer == 1)
    shares = head_shares(graph, node)
    by_hand = torch.zeros_like(shares)
    row = graph.row(node)
    for k in range(graph.n_edges):
        if int(graph.edge_index[0, k]) == row:
            src = graph.nodes[int(graph.edge_index[1, k])]
            by_hand[:, src.pos] += graph.head_weights[k].abs()
    assert torch.allclose(shares, by_hand) and float(shares.sum()) > 0
    head, key = default_route(graph, node)
    assert float(shares[head].sum()) == float(shares.sum(1).max()) and float(shares[head, key]) == float(
        shares[head].max())
    assert key <= node.pos
    mlp = next(n for n in graph.nodes if n.kind == "mlp_feature")
    assert head_shares(graph, mlp) is None and default_route(graph, mlp) is None
    # the strongest incoming edges and the head carrying most of each
    routes = edge_routes(graph, node, 5)
    weights = {graph.nodes[int(graph.edge_index[1, k])]: k for k in range(graph.n_edges)
               if int(graph.edge_index[0, k]) == row}
    assert len(routes) == min(5, len(weights))
    assert [abs(r.weight) for r in routes] == sorted((abs(float(graph.edge_weight[k])) for k in weights.values()),
                                                     reverse=True)[:len(routes)]
    for r in routes:
        parts = graph.head_weights[weights[r.source]]
        assert r.head == int(parts.abs().argmax()) and r.head_part == float(parts[r.head])
        assert abs(float(parts.sum()) - r.weight) < 1e-9  # the parts sum to the edge's weight
    assert edge_routes(graph, mlp) == []
    auto = attribute(rm, PROMPT, method="autograd")
    attn = next(n for n in auto.nodes if n.kind == "attn_feature")
    assert head_shares(auto, attn) is None and default_route(auto, attn) is None and edge_routes(auto, attn) == []
