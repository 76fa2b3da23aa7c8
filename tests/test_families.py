"""Gemma-2, Llama-3 and Qwen3 (issue 23): the exactness suite (a)–(e) and QK attribution on tiny random float64 models
of each family built from TransformerLens configs (RMSNorm, Gemma-2's post-norms, rotary, grouped-query attention,
gated MLPs, soft-capping, sliding windows, QK-norm, tied/untied unembeddings); names; the CLI end to end on a saved
tiny model of each family, and the explorer opening the result."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import random_dictionaries

from circuits.attribution import Contrast, TopLogits, attribute, explain_attention
from circuits.attribution.autograd import autograd_edges
from circuits.attribution.sources import collect_sources
from circuits.attribution.targets import resolve_logit_targets, uncapped_logits
from circuits.families import FAMILIES, PUBLIC_MODELS, tiny_model
from circuits.interventions import Edit, run_edited
from circuits.model import hook_attn_scores
from circuits.replacement import AttributionError, ReplacementModel

PROMPT = "When Mary and John went to the store, John gave a drink to"
TARGET = Contrast(" Mary", " John")


def assert_close(actual, expected, rtol=1e-6, atol=1e-10, what=""):
    diff = (actual - expected).abs()
    ok = diff <= atol + rtol * expected.abs()
    assert bool(ok.all()), (f"{what}: max abs diff {diff.max().item():.3e}, {int((~ok).sum())} of {ok.numel()} "
                            "outside tolerance")


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return request.param


_CACHE: dict = {}


@pytest.fixture(scope="module")
def rm(family, tmp_path_factory):
    """A tiny float64 model of the family with random transcoders and attention SAEs on every layer."""
    if family not in _CACHE:
        model = tiny_model(family, seed=0, tokenizer_folder=tmp_path_factory.mktemp(family) / "tokenizer")
        _CACHE[family] = ReplacementModel(model, random_dictionaries(model, seed=1))
    return _CACHE[family]


def test_the_tiny_models_have_the_family_features(family, rm):
    cfg = rm.cfg
    assert cfg.normalization_type == "RMS" and not rm.has_ln and rm.has_norm
    assert cfg.positional_embedding_type == "rotary" and "hook_pos_embed" not in rm.model.hook_dict
    assert cfg.n_key_value_heads < cfg.n_heads and cfg.gated_mlp and cfg.d_model <= 64
    assert cfg.dtype == torch.float64
    if family == "gemma2":
        assert rm.has_post_norm and cfg.attn_scores_soft_cap > 0 and cfg.output_logits_soft_cap > 0
        assert cfg.use_local_attn and "local" in cfg.attn_types
    tied = bool(torch.equal(rm.model.W_U, rm.model.W_E.T))
    assert tied == FAMILIES[family].tied_unembed
    if family == "qwen3":
        assert cfg.use_qk_norm


def test_a_splice_with_errors_is_exact_and_the_frozen_model_equals_clean(rm):
    cache = rm.run(PROMPT)
    tokens = cache.tokens[None]
    with torch.no_grad():
        clean = rm.model(tokens)[0]
        with rm.frozen(cache):
            frozen = rm.model(tokens)[0]
    assert (cache.logits - clean).abs().max() <= 1e-12
    assert (frozen - clean).abs().max() <= 1e-12
    # the frozen pattern carries the sliding window: a local layer attends to at most `window_size` keys
    if rm.cfg.use_local_attn:
        local = rm.cfg.attn_types.index("local")
        assert (cache.patterns[local] > 0).sum(-1).max() <= rm.cfg.window_size


def test_a_float32_three_layer_model_splices_to_1e4_and_keeps_the_identity(family, tmp_path):
    """The families at the organism's width in float32 (3 layers, d_model 64, alternating local/global layers)."""
    model = tiny_model(family, seed=5, tokenizer_folder=tmp_path / "tokenizer", n_layers=3, d_model=64, d_mlp=128,
                       dtype="float32")
    rm = ReplacementModel(model, random_dictionaries(model, d_sae=96, k=8, seed=6))
    cache = rm.run(PROMPT)
    with torch.no_grad():
        assert (cache.logits - model(cache.tokens[None])[0]).abs().max().item() <= 1e-4
    g = attribute(rm, PROMPT, TARGET, cache=cache)
    mask = g.explained_mask()
    assert_close((g.incoming_sum() + g.constants)[mask], g.pre_activations[mask], rtol=1e-4, atol=1e-4,
                 what="float32 identity")


@pytest.mark.parametrize("target", [TARGET, TopLogits(0.5, 3)], ids=["contrast", "top"])
def test_b_incoming_edges_plus_constant_equal_pre_activation(rm, target):
    g = attribute(rm, PROMPT, target, method="analytic")
    mask = g.explained_mask()
    assert mask.sum() > 20 and g.n_edges > 500
    assert_close((g.incoming_sum() + g.constants)[mask], g.pre_activations[mask], what="edges + constant")
    assert {"token", "attn_feature", "mlp_feature", "attn_error", "mlp_error"} <= {n.kind for n in g.nodes}


def test_b_a_soft_capped_logit_target_is_the_logit_before_the_cap(rm):
    g = attribute(rm, PROMPT, TARGET, method="analytic")
    cache = rm.run(PROMPT)
    a, b = g.metadata["contrast"]
    raw = uncapped_logits(rm.model, cache.logits[-1])
    assert abs(float(g.pre_activations[-1]) - float(raw[a] - raw[b])) < 1e-10
    if rm.cfg.output_logits_soft_cap > 0:  # the cap bites on this model: capped and raw differ
        assert (raw - cache.logits[-1]).abs().max() > 1e-3


def test_c_doubling_a_source_moves_each_target_by_its_edge_weight(rm):
    cache = rm.run(PROMPT)
    g = attribute(rm, PROMPT, TARGET, method="analytic", cache=cache)
    a = g.adjacency()
    gen = torch.Generator().manual_seed(0)
    sources = [i for i, n in enumerate(g.nodes) if n.kind != "logit_diff"]
    picks = [sources[int(j)] for j in torch.randint(len(sources), (5,), generator=gen)]
    picks.append(next(i for i, n in enumerate(g.nodes) if n.kind == "token" and n.pos == 3))
    picks.append(next(i for i, n in enumerate(g.nodes) if n.kind == "attn_error" and n.layer == 0))
    picks.append(next(i for i, n in enumerate(g.nodes) if n.kind == "attn_feature" and n.layer == 0))
    mary, john = g.metadata["contrast"]
    targets = [t for t, n in enumerate(g.nodes) if n.kind.endswith("_feature") or n.kind == "logit_diff"]
    for row in picks:
        node = g.nodes[row]
        logits, pres, _ = run_edited(rm, cache, [Edit(node, "scale", 2.0)], frozen=True, direct=True)
        raw = uncapped_logits(rm.model, logits[-1])
        moved = []
        for t in targets:
            tnode = g.nodes[t]
            if tnode.kind == "logit_diff":
                moved.append(raw[mary] - raw[john] - g.pre_activations[t])
            else:
                name = ("attn_sae_L" if tnode.kind == "attn_feature" else "transcoder_L") + str(tnode.layer)
                moved.append(pres[name][tnode.pos, tnode.index] - g.pre_activations[t])
        assert_close(torch.stack(moved).detach(), a[targets, row], rtol=1e-6, atol=1e-9,
                     what=f"doubling {node.short()}")


def test_d_analytic_edges_equal_autograd_edges(rm):
    ga = attribute(rm, PROMPT, TARGET, method="analytic")
    gg = attribute(rm, PROMPT, TARGET, method="autograd")
    assert ga.nodes == gg.nodes
    assert_close(gg.adjacency(), ga.adjacency(), rtol=1e-9, atol=1e-12, what="analytic vs autograd edges")
    mask = ga.explained_mask()
    assert_close(gg.constants[mask], ga.constants[mask], rtol=1e-9, atol=1e-12, what="constants")


def test_e_per_head_parts_equal_edges_through_that_head_alone(rm):
    """With grouped-query attention each query head's part reads the value head it shares: the analytic per-head
    parts equal autograd edges in the frozen model whose other heads' patterns are zero."""
    cache = rm.run(PROMPT)
    g = attribute(rm, PROMPT, TARGET, method="analytic", cache=cache)
    attn_rows = torch.tensor([g.nodes[t].kind == "attn_feature" for t in g.edge_index[0].tolist()])
    assert_close(g.head_weights[attn_rows].sum(1), g.edge_weight[attn_rows], what="per-head sum")
    src = collect_sources(rm, cache)
    reads = resolve_logit_targets(rm.model, cache.logits[-1], TARGET, False, cache.n_pos - 1)
    rows = torch.tensor([n.kind == "attn_feature" for n in g.nodes])
    for head in range(rm.cfg.n_heads):
        only = [p.clone() for p in cache.patterns]
        for p in only:
            p[torch.arange(p.shape[0]) != head] = 0
        edges = autograd_edges(rm, dataclasses.replace(cache, patterns=only), src, reads)
        dense = torch.zeros(g.n_nodes, g.n_nodes, dtype=torch.float64)
        dense[edges.target, edges.source] = edges.weight
        per_head = torch.zeros_like(dense)
        per_head[g.edge_index[0][attn_rows], g.edge_index[1][attn_rows]] = g.head_weights[attn_rows, head]
        assert_close(dense[rows], per_head[rows], rtol=1e-9, atol=1e-12, what=f"head {head}")


def test_pruning_faithfulness_and_the_logit_lens_run_on_each_family(rm):
    """The full graph scores 1 under zero and mean ablation, a pruned one keeps fewer features, and the logit lens
    (with Gemma-2's output soft-cap) ends at the model's own next-token probabilities."""
    from circuits import prune
    from circuits.interventions import Ablation, faithfulness, logit_diff_metric, mean_ablation
    from circuits.lens import logit_lens

    cache = rm.run(PROMPT)
    g = attribute(rm, PROMPT, TARGET, cache=cache)
    metric = logit_diff_metric(rm.model, " Mary", " John")
    for ablation in (Ablation("zero"), mean_ablation(rm, [rm.model.to_tokens([PROMPT, "The store gave John a drink"])])):
        full = faithfulness(rm, cache, g, metric, ablation, convention="held-inactive")
        assert abs(full.score - 1.0) < 1e-9 and full.empty != full.full
        pruned = faithfulness(rm, cache, prune(g, 0.5, 0.9).graph, metric, ablation, convention="held-inactive")
        assert pruned.n_features < full.n_features
    lens = logit_lens(rm, cache)
    probs = torch.softmax(cache.logits, -1)
    assert torch.allclose(lens.top_probs[-1], probs.max(-1).values, atol=1e-12)


def test_layers_without_attention_saes_autograd_identity(family, tmp_path):
    """Attention layers without an SAE are linear channels of the frozen model (post-norm, window and soft-cap
    included): the autograd engine's edges + constants still equal every pre-activation."""
    model = tiny_model(family, seed=2, tokenizer_folder=tmp_path / "tokenizer")
    dicts = random_dictionaries(model, seed=3, kinds=("transcoder",)) + \
        random_dictionaries(model, seed=4, layers=[1], kinds=("attention_sae",))
    rm = ReplacementModel(model, dicts)
    g = attribute(rm, PROMPT, TARGET, method="autograd")
    mask = g.explained_mask()
    assert mask.sum() > 10
    assert_close((g.incoming_sum() + g.constants)[mask], g.pre_activations[mask], what="autograd identity")


def test_the_reverse_engine_equals_autograd_or_is_not_picked(family, tmp_path):
    """Transcoder-only layers (auto picks the reverse sweeps): reverse = autograd for RMSNorm, rotary, GQA, QK-norm
    models, and for Gemma-2, whose attention channels carry a post-norm (the sweeps scale g by it)."""
    model = tiny_model(family, seed=2, tokenizer_folder=tmp_path / "tokenizer")
    dicts = random_dictionaries(model, seed=3, kinds=("transcoder",)) + \
        random_dictionaries(model, seed=4, layers=[1], kinds=("attention_sae",))
    rm = ReplacementModel(model, dicts)
    auto = attribute(rm, PROMPT, TARGET)
    grad = attribute(rm, PROMPT, TARGET, method="autograd")
    assert_close(auto.adjacency(), grad.adjacency(), rtol=1e-9, atol=1e-12, what="auto vs autograd")
    assert auto.metadata["method"] == "reverse"


@pytest.fixture(scope="module")
def rm_resid(family, tmp_path_factory):
    """Transcoders reading the raw residual stream (``hook_resid_mid``): skip transcoders on every layer, or a CLT,
    with attention SAEs everywhere (analytic) — circuit-tracer's CLT input."""
    from test_skip_clt import random_clt, skip_transcoders

    from circuits.dictionaries import DictionarySet
    from circuits.dictionaries.public_sets import read_residual

    model = tiny_model(family, seed=7, tokenizer_folder=tmp_path_factory.mktemp(family) / "tokenizer")
    attn = random_dictionaries(model, seed=8, kinds=("attention_sae",))
    out = {}
    for kind, tcs in (("skip", skip_transcoders(model, seed=9)), ("clt", [random_clt(model, seed=10)])):
        read_residual(tcs)
        out[kind] = ReplacementModel(model, DictionarySet(f"resid-{kind}", {
            **{d.cfg.name: d for d in attn}, **{str(i): d for i, d in enumerate(tcs)}}))
    return out


@pytest.mark.parametrize("kind", ["skip", "clt"])
def test_raw_residual_transcoders_keep_every_invariant(rm_resid, kind):
    """(a) exact splice, (b) edges + constant = pre-activation, (c) doubling = edge weight, (d) analytic = autograd,
    and QK terms = the hooked score, for skip transcoders and a CLT reading hook_resid_mid."""
    rm = rm_resid[kind]
    assert all(tc.hook_in.endswith("hook_resid_mid") for tc in rm.transcoders.values())
    cache = rm.run(PROMPT)
    with torch.no_grad():
        assert (cache.logits - rm.model(cache.tokens[None])[0]).abs().max() <= 1e-12
    ga = attribute(rm, PROMPT, TARGET, method="analytic", cache=cache)
    gg = attribute(rm, PROMPT, TARGET, method="autograd", cache=cache)
    mask = ga.explained_mask()
    assert_close((ga.incoming_sum() + ga.constants)[mask], ga.pre_activations[mask], what="edges + constant")
    assert_close(gg.adjacency(), ga.adjacency(), rtol=1e-9, atol=1e-12, what="analytic vs autograd")
    a = ga.adjacency()
    mary, john = ga.metadata["contrast"]
    targets = [t for t, n in enumerate(ga.nodes) if n.kind.endswith("_feature") or n.kind == "logit_diff"]
    for row in [i for i, n in enumerate(ga.nodes) if n.kind == "mlp_feature" and n.layer == 0][:3]:
        logits, pres, _ = run_edited(rm, cache, [Edit(ga.nodes[row], "scale", 2.0)], frozen=True, direct=True)
        raw = uncapped_logits(rm.model, logits[-1])
        moved = [raw[mary] - raw[john] - ga.pre_activations[t] if ga.nodes[t].kind == "logit_diff" else
                 pres[("attn_sae_L" if ga.nodes[t].kind == "attn_feature" else "transcoder_L")
                      + str(ga.nodes[t].layer)][ga.nodes[t].pos, ga.nodes[t].index] - ga.pre_activations[t]
                 for t in targets]
        assert_close(torch.stack(moved).detach(), a[targets, row], rtol=1e-6, atol=1e-9, what="doubling")
    p = cache.n_pos - 1
    qk = explain_attention(rm, cache, 1, 0, p, p - 1)
    assert abs(qk.value - float(_scores(rm, cache, 1)[0, p, p - 1])) < 1e-9
    assert abs(qk.total() - qk.value) < 1e-9 * max(1.0, abs(qk.value))
    with pytest.raises(AttributionError, match="hook_resid_mid"):
        attribute(rm, PROMPT, TARGET, method="reverse", cache=cache)


def _scores(rm, cache, layer):
    """[heads, q, k] pre-softmax scores read from TransformerLens' hook, before the soft-cap."""
    _, store = rm.model.run_with_cache(cache.tokens[None], names_filter=hook_attn_scores(layer))
    s = store[hook_attn_scores(layer)][0]
    cap = rm.cfg.attn_scores_soft_cap
    return cap * torch.atanh(s / cap) if cap > 0 else s


@pytest.mark.parametrize("layer", [0, 1])
def test_qk_terms_sum_to_the_hooked_score(rm, layer):
    """Rotary (a per-position rotation of each share), GQA (the shared key head), QK-norm (frozen per-head scales)
    and soft-capping (the raw score is explained): the table sums to TransformerLens' own score."""
    cache = rm.run(PROMPT)
    p = cache.n_pos - 1
    window = rm.cfg.window_size if rm.cfg.use_local_attn and rm.cfg.attn_types[layer] == "local" else p + 1
    a, b = p - 1, max(p - window + 1, 0)
    scores = _scores(rm, cache, layer)
    for head in (0, rm.cfg.n_heads - 1):
        qk = explain_attention(rm, cache, layer, head, p, a)
        assert abs(qk.value - float(scores[head, p, a])) < 1e-9
        assert abs(qk.total() - qk.value) < 1e-9 * max(1.0, abs(qk.value))
        contrast = explain_attention(rm, cache, layer, head, p, (a, b))
        assert abs(contrast.total() - float(scores[head, p, a] - scores[head, p, b])) < 1e-9
        pattern = explain_attention(rm, cache, layer, head, p, a, quantity="pattern")
        assert abs(pattern.total() - pattern.value) < 1e-9 * max(1.0, abs(pattern.value))


def test_qk_removing_a_source_in_the_frozen_model_moves_the_score_by_its_marginal(rm):
    """Subtracting a source's contribution from the stream entering layer 1, with every norm (QK-norm included) and
    the patterns frozen, moves TransformerLens' (un-capped) score by minus its marginal."""
    from circuits.attribution.qk import stream_sources
    from circuits.model import hook_resid_pre

    cache = rm.run(PROMPT)
    layer, head, p = 1, rm.cfg.n_heads - 1, cache.n_pos - 1
    a = p - 1
    nodes, writes, pos, _ = stream_sources(rm, cache, layer)
    qk = explain_attention(rm, cache, layer, head, p, a)
    margins = {(m.node, m.pos): m.contribution for m in qk.query_marginals() + qk.key_marginals()}
    cap = rm.cfg.attn_scores_soft_cap

    def score(edit=None):
        got = {}

        def subtract(act, hook):
            act = act.clone()
            if edit is not None:
                act[0, int(pos[edit])] -= writes[edit].to(act.dtype)
            return act

        hooks = [(hook_resid_pre(layer), subtract),
                 (hook_attn_scores(layer), lambda act, hook: got.__setitem__("s", act[0, head, p, a].item()))]
        with torch.no_grad(), rm.frozen(cache), rm.model.hooks(fwd_hooks=hooks):
            rm.model(cache.tokens[None])
        s = torch.tensor(got["s"], dtype=torch.float64)
        return float(cap * torch.atanh(s / cap)) if cap > 0 else float(s)

    clean = score()
    assert abs(clean - qk.value) < 1e-9
    picks = [i for i, n in enumerate(nodes) if int(pos[i]) == p][:8] + [i for i, n in enumerate(nodes)
                                                                        if int(pos[i]) == a][:8]
    for i in picks:
        moved = score(i) - clean
        assert abs(moved + margins[(nodes[i], int(pos[i]))]) < 1e-9, (nodes[i], moved)


def test_qk_pattern_marginals_are_the_first_order_pattern_change(rm):
    """The pattern quantity (softmax Jacobian, times the soft-cap's slope on Gemma-2): removing ε of a source moves
    the live softmax of TransformerLens' scores A[p, a] by −ε × its marginal, to first order."""
    from circuits.attribution.qk import stream_sources
    from circuits.model import hook_resid_pre

    cache = rm.run(PROMPT)
    layer, head, p = 1, 0, cache.n_pos - 1
    a = p - 1
    nodes, writes, pos, _ = stream_sources(rm, cache, layer)
    qk = explain_attention(rm, cache, layer, head, p, a, quantity="pattern")
    # a source at p writes the query and the key at p (which the pattern also reads): both its marginals move A
    margins = {(m.node, m.pos): m.contribution for m in qk.key_marginals()}
    for m in qk.query_marginals():
        margins[(m.node, m.pos)] = margins.get((m.node, m.pos), 0.0) + m.contribution
    eps = 1e-6

    def pattern(edit=None, scale=0.0):
        got = {}

        def subtract(act, hook):
            act = act.clone()
            if edit is not None:
                act[0, int(pos[edit])] -= scale * writes[edit].to(act.dtype)
            return act

        hooks = [(hook_resid_pre(layer), subtract),
                 (hook_attn_scores(layer), lambda act, hook: got.__setitem__("s", act[0, head, p, :p + 1].clone()))]
        with torch.no_grad(), rm.frozen(cache), rm.model.hooks(fwd_hooks=hooks):
            rm.model(cache.tokens[None])
        return float(torch.softmax(got["s"], -1)[a])

    clean = pattern()
    assert abs(clean - float(cache.patterns[layer][head, p, a])) < 1e-12
    picks = [i for i, n in enumerate(nodes) if int(pos[i]) == p][:5] + [i for i, n in enumerate(nodes)
                                                                        if int(pos[i]) == a][:5]
    for i in picks:
        moved = (pattern(i, eps) - clean) / eps
        m = margins[(nodes[i], int(pos[i]))]
        assert abs(moved + m) < 1e-4 * max(1.0, abs(m)), (nodes[i], moved, m)


def test_qk_refuses_a_key_outside_the_sliding_window(rm):
    from circuits.errors import AttributionError

    if not rm.cfg.use_local_attn:
        pytest.skip("no sliding window in this family")
    cache = rm.run(PROMPT)
    local = rm.cfg.attn_types.index("local")
    with pytest.raises(AttributionError, match="window"):
        explain_attention(rm, cache, local, 0, cache.n_pos - 1, 0)


def test_public_names_fail_at_once_offline_naming_the_default(no_network):
    import time

    from circuits.errors import ModelLoadError
    from circuits.model import load_model

    for name in PUBLIC_MODELS:
        t0 = time.perf_counter()
        with pytest.raises(ModelLoadError, match="organism"):
            load_model(name)
        assert time.perf_counter() - t0 < 2.0


def _trace_with_the_cli(family: str, folder) -> tuple:
    """Save a tiny model of `family` and a random dictionary set, trace PROMPT with `circuits trace --model PATH
    --dicts PATH`; (the in-memory model, the graph file)."""
    from circuits.cli import main
    from circuits.dictionaries import DictionarySet
    from circuits.families import save_model

    model = tiny_model(family, seed=0, tokenizer_folder=folder / "tok")
    save_model(model, folder / "model", tokenizer_folder=folder / "tok")
    dset = DictionarySet(f"tiny-{family}", {d.cfg.name: d for d in random_dictionaries(model, seed=1)})
    dset.save(folder / "dicts")
    out = folder / f"{family}.json"
    assert main(["trace", PROMPT, "--model", str(folder / "model"), "--dicts", str(folder / "dicts"),
                 "--target", "Mary", "--contrast", "John", "--json", str(out), "--quiet"]) == 0
    return model, out


def test_a_broken_saved_model_folder_is_one_clear_error(tmp_path):
    from circuits.errors import ModelLoadError
    from circuits.families import save_model
    from circuits.model import load_model

    model = tiny_model("llama3", seed=0, tokenizer_folder=tmp_path / "tok")
    for name in ("weights", "vocab"):
        save_model(model, tmp_path / name, tokenizer_folder=tmp_path / "tok")
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(ModelLoadError, match="corrupt weight file"):
        load_model(str(tmp_path / "weights"))
    meta = json.loads((tmp_path / "vocab" / "config.json").read_text())
    meta["config"]["d_vocab"] = 7
    (tmp_path / "vocab" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="tokenizer .* has .* tokens but the config says d_vocab 7"):
        load_model(str(tmp_path / "vocab"))


def test_the_cli_traces_a_saved_tiny_model_of_each_family(family, tmp_path, capsys):
    from circuits import Graph
    from circuits.model import load_model

    model, out = _trace_with_the_cli(family, tmp_path)
    loaded = load_model(str(tmp_path / "model")).model
    tokens = loaded.to_tokens(PROMPT)
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))  # the saved folder is the same model
    g = Graph.from_json(json.loads(out.read_text()))  # the pruned graph
    assert g.n_nodes > 20 and g.metadata["model"] == str(tmp_path / "model") and "pruning" in g.metadata
    assert {"token", "attn_feature", "logit_diff"} <= {n.kind for n in g.nodes}
    assert g.metadata["method"] == "analytic"  # an SAE on every attention layer


def test_the_explorer_opens_the_traced_graph_of_each_family(app, monkeypatch, tmp_path):
    """Each family's graph file, uploaded to the explorer, opens without an exception or an error message."""
    import streamlit

    for family in sorted(FAMILIES):
        _, out = _trace_with_the_cli(family, tmp_path / family)
        upload = _Upload(out.read_bytes(), out.name, f"family-{family}")
        monkeypatch.setattr(streamlit, "file_uploader", lambda *a, upload=upload, **k: upload)
        app.run(timeout=120)
        assert not app.exception, [e.value for e in app.exception]
        assert not app.error, [e.value for e in app.error]
        assert any(f"opened {out.name}" in s.value for s in app.success), [s.value for s in app.success]


class _Upload:
    """What `st.file_uploader` returns (the same object on every rerun, as the real uploader keeps its file)."""

    def __init__(self, data: bytes, name: str, file_id: str):
        self._data, self.name, self.file_id, self.size = data, name, file_id, len(data)

    def getvalue(self) -> bytes:
        return self._data
