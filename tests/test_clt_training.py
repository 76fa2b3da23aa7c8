"""Cross-layer transcoder training on a tiny model: every output layer's FVU falls, L0 stays at k per layer, a
resumed run is the uninterrupted run, the sparse decoder equals the dense one, and the trained CLT saves, loads
and splices exactly."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from circuits.dictionaries.clt import CLTConfig, CrossLayerTranscoder
from circuits.dictionaries.train import DictTrainConfig, sparse_decode
from circuits.dictionaries.train_clt import decode_all, set_decoder_norm_to_unit, train_clt

CFG = DictTrainConfig(total_tokens=256 * 80, batch_size=256, lr=3e-3, rows_per_forward=16, buffer_tokens=2048,
                      dead_after_tokens=2048, checkpoint_every=40, log_every=10, resample_every=20,
                      resample_until=0.5, resample_dead_after_tokens=2048)


def _clt_cfg(model, activation="batchtopk"):
    return CLTConfig(model.cfg.n_layers, model.cfg.d_model, 64, activation=activation, k=4,
                     context_size=model.cfg.n_ctx, model_name="tiny")


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("clt")
    return out, train_clt(tiny_model, _clt_cfg(tiny_model), out, CFG, progress=False)


def test_training_lowers_every_layers_fvu_and_keeps_l0(trained):
    out, clt = trained
    log = [json.loads(line) for line in (out / "clt_log.jsonl").read_text().splitlines()]
    assert len(log) == 8 and log[-1]["step"] == 80
    for layer in ("L0", "L1"):
        first, last = log[0][layer], log[-1][layer]
        assert last["fvu"] < 0.7 * first["fvu"], (layer, first, last)
        assert last["l0"] == pytest.approx(4, abs=1e-6)  # BatchTopK keeps k·B per batch and layer
    # the decoders to later layers were trained (they start at zero), and every feature's concatenated decoder
    # has unit norm
    assert clt[0].W_dec_out[:, 1].abs().max() > 0
    for layer in clt.layers:
        torch.testing.assert_close(layer.W_dec_out.flatten(1).norm(dim=-1), torch.ones(64))


def test_resume_reproduces_an_uninterrupted_run(tiny_model, trained, tmp_path):
    _, full = trained
    train_clt(tiny_model, _clt_cfg(tiny_model), tmp_path, CFG, progress=False, stop_after=40)
    resumed = train_clt(tiny_model, _clt_cfg(tiny_model), tmp_path, CFG, progress=False)
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)


def test_resume_with_another_width_is_refused_before_streaming(tiny_model, trained):
    from circuits.errors import CheckpointError

    out, _ = trained
    wider = dataclasses.replace(_clt_cfg(tiny_model), d_sae=96)
    with pytest.raises(CheckpointError, match="d_sae 64 in the checkpoint, 96 now"):
        train_clt(tiny_model, wider, out, CFG, progress=False)


def test_sparse_decode_equals_the_dense_product_with_gradients():
    gen = torch.Generator().manual_seed(0)
    pre = torch.randn(50, 40, generator=gen, dtype=torch.float64)
    pre[3] = -1.0  # a row with no active feature
    codes = torch.relu(pre) * (pre > 1.0)
    W = torch.randn(40, 7, generator=gen, dtype=torch.float64)
    g = torch.randn(50, 7, generator=gen, dtype=torch.float64)
    grads = []
    for f in (sparse_decode, torch.matmul):
        c, w = codes.clone().requires_grad_(), W.clone().requires_grad_()
        out = f(c, w)
        (out * g).sum().backward()
        grads.append((out.detach(), c.grad * (codes > 0), w.grad))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_sparse_decode_of_all_layers_equals_the_clt_reconstruction():
    clt = CrossLayerTranscoder(CLTConfig(3, 8, 16, activation="topk", k=3), dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in clt.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    set_decoder_norm_to_unit(clt)
    xs = [torch.randn(20, 8, generator=gen, dtype=torch.float64) for _ in range(3)]
    codes = clt.encode(xs)
    for a, b in zip(decode_all(clt, codes), clt.reconstruct(codes), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_trained_clt_saves_loads_and_splices_exactly(tiny_model, trained, tmp_path):
    """Train -> save (our CLT folder in a set) -> load gives the same codes and outputs; spliced with its error
    terms the model's logits are unchanged, and without them each MLP output is the CLT's reconstruction."""
    from circuits.dictionaries.dictset import DictionarySet
    from circuits.replacement import splice_hooks

    _, clt = trained
    folder = DictionarySet("tiny", {"clt": clt}).save(tmp_path / "set")
    assert json.loads((folder / "set.json").read_text())["dictionaries"] == ["clt"]
    loaded = DictionarySet.load(folder)
    assert [d.cfg.name for d in loaded] == ["transcoder_L0", "transcoder_L1"]
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (2, tiny_model.cfg.n_ctx), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean, cache = tiny_model.run_with_cache(tokens)
        xs = [cache[f"blocks.{layer}.ln2.hook_normalized"] for layer in range(2)]
        codes = clt.encode(xs)
        want = clt.reconstruct(codes)
        codes2 = [d.encode(x) for d, x in zip(loaded, xs, strict=True)]
        for a, b in zip(codes, codes2, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        outputs: dict = {}
        tiny_model.run_with_hooks(tokens, fwd_hooks=splice_hooks(list(loaded), error="on", outputs=outputs))
        exact = tiny_model.run_with_hooks(tokens, fwd_hooks=splice_hooks(list(loaded), error="on"))
    torch.testing.assert_close(exact, clean, rtol=0, atol=1e-5)
    for layer in range(2):  # with errors on, every hook sees the clean inputs: outputs = the trained CLT's
        torch.testing.assert_close(outputs[f"transcoder_L{layer}"], want[layer], rtol=1e-5, atol=1e-5)


def test_fidelity_report_splices_a_clt_whole(tiny_model, trained):
    """Per-dictionary entries of a CLT's layers come from the whole CLT spliced: shared CE/KL, own FVU and L0; the
    report also has the IOI logit difference on held-out templates with everything spliced."""
    from circuits.dictionaries.dictset import DictionarySet
    from circuits.dictionaries.evaluate import FidelitySizes, evaluate_fidelity

    _, clt = trained
    sizes = FidelitySizes(rows=4, mean_rows=4, ioi_prompts=4, batch=4, dead_rows=4)
    report = evaluate_fidelity(tiny_model, DictionarySet("tiny", {"clt": clt}), sizes)
    l0, l1 = report["dictionaries"]["transcoder_L0"], report["dictionaries"]["transcoder_L1"]
    assert l0["spliced_with"] == "clt" and l0["ce_spliced"] == l1["ce_spliced"] == report["all"]["ce_spliced"]
    assert l0["fvu"] != l1["fvu"] and 0 < l0["l0"] <= 8 and 0 <= l1["fvu"]
    assert report["all"]["ioi_ld_retained_heldout_templates"] == pytest.approx(
        report["all"]["ioi_ld_spliced_heldout_templates"] / report["all"]["ioi_ld_clean_heldout_templates"])


def test_a_set_can_link_members_of_another_set(tiny_model, trained, tmp_path):
    """`save(links=...)` writes a member as a path to a folder that already holds it; loading follows the path."""
    from circuits.dictionaries.base import DictionaryConfig, make_dictionary
    from circuits.dictionaries.dictset import DictionarySet
    from circuits.dictionaries.io import DictionaryLoadError

    _, clt = trained
    c = tiny_model.cfg
    attn = make_dictionary(DictionaryConfig("attention_sae", 0, c.n_heads * c.d_head, 16, c.n_heads * c.d_head,
                                            activation="topk", k=2, n_heads=c.n_heads))
    with torch.no_grad():
        attn.W_dec.normal_(generator=torch.Generator().manual_seed(0))
    DictionarySet("tiny", {"a": attn}).save(tmp_path / "base")
    dset = DictionarySet("tiny", {"a": attn, "clt": clt})
    with pytest.raises(DictionaryLoadError, match="no dictionary folder"):
        dset.save(tmp_path / "bad", links={"attn_sae_L0": "../nowhere/attn_sae_L0"})
    folder = dset.save(tmp_path / "linked", links={"attn_sae_L0": "../base/attn_sae_L0"})
    assert not (folder / "attn_sae_L0").exists()
    assert json.loads((folder / "set.json").read_text())["dictionaries"] == ["../base/attn_sae_L0", "clt"]
    loaded = DictionarySet.load(folder)
    assert sorted(loaded.dictionaries) == ["attn_sae_L0", "transcoder_L0", "transcoder_L1"]
    torch.testing.assert_close(loaded.attention_sae(0).W_dec, attn.W_dec)


@pytest.fixture(scope="module", params=["skip", "clt"])
def study_rm(request, tiny64):
    """The float64 tiny model with its attention SAEs and skip transcoders or a random CLT for the MLPs."""
    from circuits.dictionaries.dictset import DictionarySet
    from circuits.replacement import ReplacementModel
    from circuits.studies.base import prepare
    from circuits.studies.ioi import IOIStudy
    from tests.test_skip_clt import random_clt, skip_transcoders

    model, dicts = tiny64
    attn = {d.cfg.name: d for d in dicts if d.cfg.kind == "attention_sae"}
    mlps = {"clt": random_clt(model)} if request.param == "clt" else {
        d.cfg.name: d for d in skip_transcoders(model)}
    rm = ReplacementModel(model, DictionarySet("tiny", {**attn, **mlps}))
    return rm, prepare(rm, IOIStudy("train"), IOIStudy("train").prompts(model, 4, 0))


def test_study_circuits_with_skip_and_clt_equal_run_edited(study_rm):
    """The case studies' batched circuit ablation (`circuit_metrics`) keeps a skip transcoder's skip term live and
    rebuilds a CLT's later layers from the kept codes: it equals `run_edited` (the intervention engine), and with
    every feature and error kept it is the clean metric."""
    import random

    from circuits.interventions import run_edited
    from circuits.studies.ablate import Circuit, circuit_masks, circuit_metrics, convention_ablation
    from circuits.studies.base import group_means

    rm, prepared = study_rm
    pp = prepared[0]
    cache = rm.run(pp.tokens)
    abl = group_means(rm, prepared)[pp.group]
    rng = random.Random(0)
    keys = [(f"{d.cfg.site}_feature", d.cfg.layer, role, i) for d in rm.dictionaries for role in ("IO", "S2", "END")
            for i in rng.sample(range(d.d_sae), 3)]
    circuits = [Circuit(f"c{i}", frozenset(rng.sample(keys, 6)), i % 2 == 0, conv)
                for i, conv in enumerate(["mean", "zero"] * 2)]
    got = circuit_metrics(rm, cache, pp, circuits, abl, batch=4)
    for c, v in zip(circuits, got, strict=True):
        want = run_edited(rm, cache, keep=circuit_masks(rm, pp, c.keys, c.errors),
                          ablation=convention_ablation(abl, cache, c.convention))[0]
        assert v == pytest.approx(float(pp.metric(want.detach())), abs=1e-9)


def test_component_rollup_with_skip_and_clt_matches_the_graph(study_rm):
    """Per MLP layer, the rolled-up effect of the features that write there (a CLT: every encoder layer at or before
    it) sums, over layers, to the graph's total feature effects."""
    from circuits.attribution import Contrast, attribute
    from circuits.pruning import total_effects
    from circuits.studies.analysis import component_rollup

    rm, prepared = study_rm
    pp = prepared[1]
    cache = rm.run(pp.tokens)
    graph = attribute(rm, pp.tokens, Contrast(pp.answer, pp.wrong), cache=cache)
    effects = total_effects(graph)
    roll = component_rollup(rm, cache, pp)
    from_graph = sum(float(effects[i]) for i, n in enumerate(graph.nodes) if n.kind == "mlp_feature")
    from_roll = sum(v[0] for k, v in roll.items() if k[0] == "mlp")
    assert from_roll == pytest.approx(from_graph, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("extra", [["--skip-transcoders"], ["--sites", "transcoder_L0"], ["--export"]])
def test_cli_clt_refuses_per_layer_options_in_one_line(extra, capsys):
    from circuits.cli import main

    assert main(["dicts", "train", "--clt", "--tokens", "4096", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("circuits: error: --clt") and extra[0] in err and len(err.splitlines()) == 1, err


def test_case_study_runs_end_to_end_with_skip_and_clt(study_rm, tmp_path):
    """A whole case study (graphs, circuit selection, faithfulness, checks, report) runs on a replacement model with
    skip transcoders or a CLT, as `circuits study ... --dicts organism-skip / organism-clt` does on the organism."""
    from circuits.studies import StudySpec, run_study, write_report
    from tests.test_studies import PlantedStudy

    rm, _ = study_rm
    spec = StudySpec("planted", model="tiny", dicts="tiny", n=8, seed=0, ig_steps=2)
    result = run_study(spec, rm=rm, study=PlantedStudy(), workers=1, top=5, progress=False)
    assert result.data["circuit"]["n_features"] == 5
    write_report(result, tmp_path / "r")
    assert (tmp_path / "r" / "report.md").exists()


@pytest.fixture(scope="module")
def organism():
    from circuits.model import load_model

    return load_model("organism").model


@pytest.mark.parametrize("name", ["organism-skip", "organism-clt"])
def test_named_organism_sets_load_with_the_default_attention_saes(name, organism):
    """`load_dictionaries("organism-skip" / "organism-clt")` reads the committed sets: their MLP replacement is a
    skip transcoder per layer / one CLT of 2,048 features per layer, and their attention SAEs are the base
    set's (`organism-base`, beside which they were trained; linked, not copied)."""
    from circuits.dictionaries import load_dictionaries
    from circuits.model import DATA_DIR

    dset = load_dictionaries(name, organism)
    base = load_dictionaries("organism-base", organism)
    assert len(dset) == 8 and not (DATA_DIR / "dictionaries" / name / "attn_sae_L0").exists()
    for layer in range(4):
        torch.testing.assert_close(dset.attention_sae(layer).W_enc, base.attention_sae(layer).W_enc, rtol=0, atol=0)
        tc = dset.transcoder(layer)
        if name == "organism-skip":
            assert tc.cfg.skip and tc.cfg.d_sae == base.transcoder(layer).cfg.d_sae
        else:
            assert len(dset.clts) == 1 and tc.clt is dset.clts[0] and tc.cfg.d_sae == 2048
