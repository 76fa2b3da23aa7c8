"""Fine-tuning a whole dictionary set through the model (`circuits.dictionaries.finetune`) on a tiny model:
KL(clean ‖ all spliced) falls, the fine-tuned set still splices exactly and reloads identically, a resumed run is
the uninterrupted run, lr 0 changes nothing, skip and cross-layer transcoders are trained whole, bad numbers fail
before any work."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from circuits.dictionaries.base import DictionaryConfig
from circuits.dictionaries.dictset import DictionarySet
from circuits.dictionaries.finetune import FinetuneConfig, RowStream, finetune_set, spliced_hooks
from circuits.errors import CheckpointError, ConfigError
from circuits.replacement import splice_hooks

CFG = FinetuneConfig(steps=30, rows=4, lr=1e-2, beta=0.1, checkpoint_every=10, log_every=5, calibrate_rows=8)


def _trained_set(model, folder) -> DictionarySet:
    """A small trained set (BatchTopK, saved and reloaded: JumpReLU at inference, as the organism's)."""
    from circuits.dictionaries.train import DictTrainConfig, train_dictionaries

    c = model.cfg
    z = c.n_heads * c.d_head
    configs = []
    for layer in range(c.n_layers):
        configs.append(DictionaryConfig("attention_sae", layer, z, 48, z, activation="batchtopk", k=4,
                                        n_heads=c.n_heads, context_size=c.n_ctx))
        configs.append(DictionaryConfig("transcoder", layer, c.d_model, 48, c.d_model, activation="batchtopk", k=4,
                                        context_size=c.n_ctx))
    cfg = DictTrainConfig(total_tokens=256 * 60, batch_size=256, lr=3e-3, rows_per_forward=16, buffer_tokens=2048,
                          dead_after_tokens=2048, checkpoint_every=60, log_every=20)
    dicts = train_dictionaries(model, configs, folder / "train", cfg, progress=False)
    DictionarySet("tiny", dicts).save(folder / "set")
    return DictionarySet.load(folder / "set")


@pytest.fixture(scope="module")
def base_set(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ft_base")
    _trained_set(tiny_model, folder)
    return folder / "set"


def _load(folder) -> DictionarySet:
    return DictionarySet.load(folder)


@pytest.fixture(scope="module")
def tuned(tiny_model, base_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft_run")
    dset = finetune_set(tiny_model, _load(base_set), CFG, out, progress=False)
    return out, dset


def _eval_tokens(model) -> torch.Tensor:
    """Rows the fine-tuning never saw (far past its steps and calibration rows)."""
    return RowStream(model, dataclasses.replace(CFG, rows=8)).block(500)


@torch.no_grad()
def _kl(model, dset, tokens) -> float:
    """Mean KL(clean ‖ all spliced, errors off) per token, with the library's splice hooks."""
    p = model(tokens).log_softmax(-1)
    q = model.run_with_hooks(tokens, fwd_hooks=splice_hooks(list(dset), "off")).log_softmax(-1)
    return (p.exp() * (p - q)).sum(-1).mean().item()


def test_kl_to_clean_logits_falls(tiny_model, base_set, tuned):
    out, dset = tuned
    tokens = _eval_tokens(tiny_model)
    before, after = _kl(tiny_model, _load(base_set), tokens), _kl(tiny_model, dset, tokens)
    assert after < 0.9 * before, (before, after)  # 0.196 -> 0.154 when written; on held-out rows, not only the training batches
    log = [json.loads(line) for line in (out / "finetune_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == CFG.steps and set(log[-1]["fvu"]) == {d.cfg.name for d in dset}
    first = sum(r["kl"] for r in log[:2]) / 2
    last = sum(r["kl"] for r in log[-2:]) / 2
    assert last < first, (first, last)


def test_tuned_set_splices_exactly_and_reloads_identically(tiny_model, tuned):
    out, dset = tuned
    tokens = _eval_tokens(tiny_model)[:2]
    with torch.no_grad():
        clean, cache = tiny_model.run_with_cache(tokens)
        store, outs = {}, {}
        exact = tiny_model.run_with_hooks(tokens, fwd_hooks=splice_hooks(list(dset), "on", store, outs))
        torch.testing.assert_close(exact, clean, rtol=0, atol=1e-5)  # errors on: the clean model
        for d in dset:  # reconstruction + error = the component's output (first dictionary: clean inputs too)
            torch.testing.assert_close(outs[d.cfg.name] + store[d.cfg.name][1],
                                       d.flatten_input(cache[d.hook_out]), rtol=0, atol=1e-5)
        # the training forward (sparse decoders) is the library's spliced forward
        off = tiny_model.run_with_hooks(tokens, fwd_hooks=splice_hooks(list(dset), "off"))
        mine = tiny_model.run_with_hooks(tokens, fwd_hooks=spliced_hooks(dset, {}))
        torch.testing.assert_close(mine, off, rtol=0, atol=1e-5)
    reloaded = _load(out / "set")  # a transcoder's b_in is folded into b_enc on disk: compare what it computes
    assert [d.cfg.name for d in reloaded] == [d.cfg.name for d in dset]
    x = torch.randn(64, max(d.cfg.d_in for d in dset), generator=torch.Generator().manual_seed(0))
    for a, b in zip(dset, reloaded, strict=True):
        xa = x[:, :a.cfg.d_in]
        torch.testing.assert_close(b.pre_activation(xa), a.pre_activation(xa), rtol=0, atol=1e-5)
        for name in ("W_dec", "b_dec", "threshold"):
            assert torch.equal(b.weights()[name], a.weights()[name]), f"{a.cfg.name}.{name}"


def test_weights_move_but_thresholds_only_by_calibration(base_set, tuned):
    out, dset = tuned
    events = [json.loads(line) for line in (out / "finetune_events.jsonl").read_text().splitlines()]
    shifted = events[-1]["threshold_shift"]
    for a, b in zip(_load(base_set), dset, strict=True):
        assert not torch.equal(a.W_enc, b.W_enc) and not torch.equal(a.W_dec, b.W_dec), a.cfg.name
        if a.cfg.name not in shifted:
            assert torch.equal(a.activation.threshold, b.activation.threshold), a.cfg.name
    assert shifted  # this run drifts (the transcoders' L0 falls), so the re-calibration is exercised
    for name, l0 in events[-1]["l0_after"].items():
        start = events[-1]["l0_start"][name]
        if name in shifted:  # shifted back onto the starting L0 (up to ties)
            assert l0 == pytest.approx(start, rel=0.01), name
        else:
            assert abs(events[-1]["l0_end"][name] - start) <= CFG.l0_tolerance * start, name


def test_resume_reproduces_an_uninterrupted_run(tiny_model, base_set, tuned, tmp_path):
    _, full = tuned
    finetune_set(tiny_model, _load(base_set), CFG, tmp_path, progress=False, stop_after=10)
    resumed = finetune_set(tiny_model, _load(base_set), CFG, tmp_path, progress=False)
    for a, b in zip(full, resumed, strict=True):
        for name, w in a.weights().items():
            torch.testing.assert_close(b.weights()[name], w, rtol=0, atol=1e-6, msg=f"{a.cfg.name}.{name}")


def test_resume_with_other_options_is_refused(tiny_model, base_set, tuned):
    out, _ = tuned
    with pytest.raises(CheckpointError, match="lr"):
        finetune_set(tiny_model, _load(base_set), dataclasses.replace(CFG, lr=5e-4), out, progress=False)


def test_lr_zero_changes_nothing(tiny_model, base_set, tmp_path):
    """Negative control: the same run with lr 0 leaves every weight and threshold as it was."""
    dset = finetune_set(tiny_model, _load(base_set), dataclasses.replace(CFG, steps=5, lr=0.0), tmp_path,
                        progress=False)
    for a, b in zip(_load(base_set), dset, strict=True):
        for name, w in a.weights().items():
            assert torch.equal(b.weights()[name], w), f"{a.cfg.name}.{name}"


@pytest.mark.parametrize("kind", ["skip", "clt"])
def test_skip_and_cross_layer_transcoders_are_trained_whole(tiny_model, tmp_path, kind):
    """A skip transcoder's W_skip and every decoder block of a CLT (spliced whole) receive updates, and the set
    still splices exactly."""
    from circuits.dictionaries.base import make_dictionary
    from circuits.dictionaries.clt import CLTConfig, CrossLayerTranscoder

    c = tiny_model.cfg
    torch.manual_seed(0)
    if kind == "clt":
        mlps = [CrossLayerTranscoder(CLTConfig(c.n_layers, c.d_model, 32, activation="jumprelu", k=None,
                                               context_size=c.n_ctx))]
    else:
        mlps = [make_dictionary(DictionaryConfig("transcoder", layer, c.d_model, 32, c.d_model,
                                                 activation="jumprelu", k=None, skip=True))
                for layer in range(c.n_layers)]
    with torch.no_grad():
        for m in mlps:
            for p in m.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.1)
    dset = DictionarySet("tiny", {f"m{i}": m for i, m in enumerate(mlps)})
    before = {f"{d.cfg.name}.{n}": w.detach().clone() for d in dset for n, w in d.weights().items()}
    cfg = dataclasses.replace(CFG, steps=3, calibrate_rows=0, checkpoint_every=3)
    finetune_set(tiny_model, dset, cfg, tmp_path, progress=False)
    after = {f"{d.cfg.name}.{n}": w for d in dset for n, w in d.weights().items()}
    trained = [k for k in before if not k.endswith("threshold")]
    assert any(k.endswith(("W_skip", "W_dec")) for k in trained)
    for k in trained:
        assert not torch.equal(before[k], after[k]), k  # every tensor moved, W_skip / later decoders included
    if kind == "clt":  # layer 0's decoder into layer 1 (a later MLP) was trained
        layer0 = dset.transcoder(0)
        assert layer0.W_dec_out.shape[1] == 2 and not torch.equal(before["transcoder_L0.W_dec"][:, 1],
                                                                    layer0.W_dec_out[:, 1])
    tokens = _eval_tokens(tiny_model)[:2]
    with torch.no_grad():
        exact = tiny_model.run_with_hooks(tokens, fwd_hooks=splice_hooks(list(dset), "on"))
        torch.testing.assert_close(exact, tiny_model(tokens), rtol=0, atol=1e-5)
    reloaded = _load(tmp_path / "set")
    assert [d.cfg.name for d in reloaded] == [d.cfg.name for d in dset]


@pytest.mark.parametrize("change, match", [(dict(steps=0), "steps 0"), (dict(rows=-1), "rows -1"),
                                           (dict(lr=float("nan")), "lr nan"), (dict(beta=-1.0), "beta -1"),
                                           (dict(answer_weight=-2.0), "answer_weight -2"),
                                           (dict(answer_space="logits"), "answer_space 'logits'"),
                                           (dict(temperature=0.0), "temperature 0"),
                                           (dict(corpus_phases=(7,)), "corpus_phases")])
def test_bad_numbers_fail_before_any_work(tmp_path, change, match):
    with pytest.raises(ConfigError, match=match):
        finetune_set(None, None, dataclasses.replace(CFG, **change), tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()


def test_cli_refuses_bad_numbers_in_one_line(capsys, tmp_path):
    from circuits.cli.main import main

    assert main(["dicts", "finetune", "--out", str(tmp_path / "o"), "--lr", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["circuits: error: fine-tuning: lr -1.0: must be a finite number ≥ 0"]


def test_temperature_kl_sees_a_shrunk_logit_difference_that_plain_kl_hardly_does():
    """Why the temperature option exists: the clean model answers IOI with a logit difference ~12.5, so a spliced
    model keeping 77% of it still puts ~all mass on the answer and the plain KL is ~0; at T = 3 the KL (× T²)
    is orders of magnitude larger, so its gradient sees the lost logit difference. T = 1 is the plain KL."""
    from circuits.dictionaries.finetune import kl_divergence

    clean = torch.zeros(1, 50)
    clean[0, 0] = 12.5
    shrunk = clean * 0.77
    plain, hot = kl_divergence(clean, shrunk), kl_divergence(clean, shrunk, temperature=3.0)
    assert plain < 0.01 and hot > 100 * plain, (plain, hot)  # 0.0025 vs 1.02 when written
    p, q = clean.log_softmax(-1), shrunk.log_softmax(-1)
    torch.testing.assert_close(plain, (p.exp() * (p - q)).sum(-1).mean())


def test_encoder_lr_scale_zero_trains_the_decoder_side_only(tiny_model, base_set, tmp_path):
    """At encoder_lr_scale 0 a transcoder's encoder is untouched, so its codes on clean inputs (L0, dead features)
    are the input set's exactly, while its decoder moves."""
    cfg = dataclasses.replace(CFG, steps=5, encoder_lr_scale=0.0, calibrate_rows=0, checkpoint_every=5)
    dset = finetune_set(tiny_model, _load(base_set), cfg, tmp_path, progress=False)
    x = torch.randn(64, tiny_model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    for a, b in zip(_load(base_set), dset, strict=True):
        assert not torch.equal(a.W_dec, b.W_dec), a.cfg.name
        if a.cfg.kind == "transcoder":
            for name in ("W_enc", "b_enc", "b_in_param"):
                assert torch.equal(getattr(a, name), getattr(b, name)), f"{a.cfg.name}.{name}"
            assert torch.equal(a.encode(x), b.encode(x))


def test_keep_codes_keeps_attention_sae_codes_while_their_output_bias_moves(tiny_model, base_set, tmp_path):
    """An attention SAE's b_dec is also its input centring, so a decoder-only fine-tune moves its codes (and its dead
    features); with keep_codes each step folds that move into b_enc: the codes on any input stay the input set's
    (to float rounding), b_dec and the decoder still move. Without it the codes do change (the check can fail)."""
    cfg = dataclasses.replace(CFG, steps=5, encoder_lr_scale=0.0, calibrate_rows=0, checkpoint_every=5)
    plain = finetune_set(tiny_model, _load(base_set), cfg, tmp_path / "plain", progress=False)
    kept = finetune_set(tiny_model, _load(base_set), dataclasses.replace(cfg, keep_codes=True), tmp_path / "kept",
                        progress=False)
    z = tiny_model.cfg.n_heads * tiny_model.cfg.d_head
    x = torch.randn(256, z, generator=torch.Generator().manual_seed(2))
    n_attn = 0
    for a, p, k in zip(_load(base_set), plain, kept, strict=True):
        if a.cfg.kind != "attention_sae":
            continue
        n_attn += 1
        assert not torch.equal(a.b_dec, k.b_dec) and not torch.equal(a.W_dec, k.W_dec), a.cfg.name
        with torch.no_grad():
            torch.testing.assert_close(k.pre_activation(x), a.pre_activation(x), rtol=0, atol=1e-5)
            assert (p.pre_activation(x) - a.pre_activation(x)).abs().max() > 1e-3, a.cfg.name
    assert n_attn == tiny_model.cfg.n_layers
    with pytest.raises(ConfigError, match="keep_codes needs encoder_lr_scale 0"):
        finetune_set(None, None, dataclasses.replace(CFG, keep_codes=True), tmp_path / "never", progress=False)


def test_shipped_finetuned_set_fires_as_its_fine_tune_recorded():
    """`load_dictionaries("organism-finetuned")` (the default until 2026-12-02, and the start of today's default's
    last steps) reads the committed set: organism-base trained longer, then fine-tuned with `--keep-codes`
    (docs/dictionaries.md#training). Its names and widths are the base set's and
    its weights are not; the fine-tune recorded every dictionary's mean L0 on its 64 check rows before and after
    (equal: the codes were kept), and the shipped float16 set, re-measured on those rows, fires as recorded."""
    from circuits.dictionaries import load_dictionaries
    from circuits.dictionaries.finetune import FinetuneConfig, clean_inputs, mean_l0
    from circuits.model import DATA_DIR, load_model

    folder = DATA_DIR / "dictionaries" / "organism-finetuned"
    record = json.loads((folder / "finetune_events.jsonl").read_text().splitlines()[-1])
    steps = json.loads((folder / "finetune_log.jsonl").read_text().splitlines()[-1])["step"]
    assert record["l0_start"] == record["l0_end"] and not record["threshold_shift"]
    model, _ = load_model("organism")
    base, ft = load_dictionaries("organism-base", model), load_dictionaries("organism-finetuned", model)
    assert [(d.cfg.name, d.cfg.d_sae) for d in ft] == [(d.cfg.name, d.cfg.d_sae) for d in base]
    for b, f in zip(base, ft, strict=True):
        assert not torch.allclose(f.W_dec, b.W_dec, atol=1e-2)
    stream = RowStream(model, FinetuneConfig(rows=16))
    l0 = mean_l0(ft, [clean_inputs(model, ft, stream.block(steps + i)) for i in range(4)])
    assert all(abs(l0[n] - v) < 0.3 for n, v in record["l0_end"].items()), (l0, record["l0_end"])


@pytest.mark.parametrize("target", [7.0, 2.5])
def test_calibrate_set_hits_the_target_l0_and_moves_only_thresholds(tiny_model, base_set, target):
    """`calibrate_set`: every dictionary's mean L0 on the calibration rows becomes the target (up to ties), only
    its threshold moves (one common δ), and a code that fired before keeps its value (a JumpReLU passes its
    pre-activation through), so raising L0 only adds features and lowering it only removes them."""
    from circuits.dictionaries.calibrate import CalibrateConfig, calibrate_set
    from circuits.dictionaries.finetune import clean_inputs

    before, dset = _load(base_set), _load(base_set)
    cfg = CalibrateConfig(target_l0=target, rows=16, first_block=50)
    report = calibrate_set(tiny_model, dset, cfg)
    tokens = RowStream(tiny_model, dataclasses.replace(CFG, rows=16)).block(50)
    xs = clean_inputs(tiny_model, dset, tokens)
    for b, d in zip(before, dset, strict=True):
        r = report[d.cfg.name]
        assert abs(r["l0_after"] - target) < 0.05, (d.cfg.name, r)
        assert (r["l0_after"] - r["l0_before"]) * (target - r["l0_before"]) > 0  # moved towards the target
        shift = d.activation.threshold - b.activation.threshold
        torch.testing.assert_close(shift, torch.full_like(shift, r["delta"]), rtol=0, atol=1e-6)
        for key in ("W_enc", "b_enc", "W_dec", "b_dec"):
            assert torch.equal(getattr(d, key), getattr(b, key)), key
        with torch.no_grad():
            old, new = b.encode(xs[d.cfg.name]), d.encode(xs[d.cfg.name])
        both = (old > 0) & (new > 0)
        assert torch.equal(old[both], new[both])
        grew = target > r["l0_before"]
        assert not ((old > 0) & ~(new > 0)).any() if grew else not (~(old > 0) & (new > 0)).any()


def test_calibrate_refuses_bad_and_unreachable_targets(tiny_model, base_set, tmp_path, capsys):
    from circuits.cli.main import main
    from circuits.dictionaries.calibrate import CalibrateConfig, calibrate_set

    with pytest.raises(ConfigError, match="cannot reach L0 1000"):
        calibrate_set(tiny_model, _load(base_set), CalibrateConfig(target_l0=1000, rows=4))
    with pytest.raises(ConfigError, match="reaches only L0"):  # more than the positive pre-activations (of 48)
        calibrate_set(tiny_model, _load(base_set), CalibrateConfig(target_l0=47, rows=4))
    with pytest.raises(ConfigError, match="target L0 -1"):
        calibrate_set(None, None, CalibrateConfig(target_l0=-1))
    assert main(["dicts", "calibrate", "--l0", "0", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "circuits: error: calibration: target L0 0.0: must be a finite number > 0"]
    assert not (tmp_path / "o").exists()


def test_cli_calibrate_writes_a_loadable_set_at_the_new_l0(tmp_path, capsys):
    """`circuits dicts calibrate` on the shipped default: the saved set reloads, and its L0 on the calibration
    rows (re-measured here) is the requested one; the input set's folder is untouched."""
    from circuits.cli.main import main
    from circuits.dictionaries import load_dictionaries
    from circuits.dictionaries.calibrate import CalibrateConfig
    from circuits.dictionaries.finetune import FinetuneConfig, clean_inputs, mean_l0
    from circuits.model import load_model

    out = tmp_path / "cal"
    assert main(["dicts", "calibrate", "--dicts", "organism", "--l0", "30", "--rows", "16", "--out", str(out),
                 "--float16"]) == 0
    from safetensors.torch import load_file

    assert {v.dtype for v in load_file(str(out / "transcoder_L3" / "sae_weights.safetensors")).values()} == {
        torch.float16}
    record = json.loads((out / "calibration.json").read_text())
    assert record["source"] == "organism" and len(record["dictionaries"]) == 8
    model, _ = load_model("organism")
    dset = load_dictionaries(str(out), model)
    block = RowStream(model, FinetuneConfig(rows=16)).block(CalibrateConfig().first_block)
    l0 = mean_l0(dset, [clean_inputs(model, dset, block)])
    assert all(abs(v - 30) < 0.05 for v in l0.values()), l0
    assert main(["dicts", "calibrate", "--l0", "30", "--out", str(out)]) == 2  # non-empty folder: refused
    assert "exists and is not empty" in capsys.readouterr().err


def test_answer_mask_marks_names_copied_from_the_same_document():
    """A position is an answer position when the next token is a name that already occurs earlier in its document
    (since the last BOS, this position included): a name seen only in the previous document does not count, nor
    does a first mention, nor a non-name token that repeats."""
    from circuits.dictionaries.finetune import answer_mask

    bos, a, b, w = 0, 5, 7, 9  # a, b: names; w: a word
    tokens = torch.tensor([[bos, a, b, w, a, bos, b, a, b, w, w]])
    mask = answer_mask(tokens, torch.tensor([a, b]), bos=bos)
    #                      a? b? w? a! bos b? a? b! w? w(non-name) last
    assert mask.int().tolist() == [[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]]


def test_masked_fvu_is_the_fvu_of_the_masked_tokens_alone():
    from circuits.dictionaries.finetune import masked_fvu

    g = torch.Generator().manual_seed(3)
    target, recon = torch.randn(10, 4, generator=g), torch.randn(10, 4, generator=g)
    sq_err = (target - recon).pow(2).sum(-1)
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1, 0], dtype=torch.bool)
    t = target[mask]
    expected = (t - recon[mask]).pow(2).sum() / (t - t.mean(0)).pow(2).sum()
    torch.testing.assert_close(masked_fvu(sq_err, target, mask), expected)
    assert masked_fvu(sq_err, target, torch.zeros(10, dtype=torch.bool)).item() == 0.0
    assert masked_fvu(sq_err, target, mask.clone().fill_(False).index_fill_(0, torch.tensor([2]), True)).item() == 0.0


def test_answer_term_is_the_error_nodes_of_the_clean_run(tiny_model, base_set):
    """The answer term's squared errors are exactly |error node|² of the local replacement model on these tokens
    (true output − reconstruction of the *clean* input, `splice_hooks` with a store, as attribution builds them),
    and the hooks leave the model's output clean."""
    from circuits.dictionaries.finetune import clean_error_hooks

    dset = _load(base_set)
    tokens = _eval_tokens(tiny_model)
    errors: dict = {}
    with torch.no_grad():
        out = tiny_model.run_with_hooks(tokens, fwd_hooks=clean_error_hooks(dset, errors))
        torch.testing.assert_close(out, tiny_model(tokens), rtol=0, atol=0)
        store: dict = {}
        tiny_model.run_with_hooks(tokens, fwd_hooks=splice_hooks(list(dset), "on", store=store))
    assert sorted(errors) == sorted(store)
    for name, (sq_err, _) in errors.items():
        node = store[name][1].reshape(-1, store[name][1].shape[-1])
        torch.testing.assert_close(sq_err, node.pow(2).sum(-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("space", ["activation", "name_logits"])
def test_answer_weight_lowers_the_error_at_answer_positions(tiny_model, base_set, tmp_path, space):
    """The same decoder-only run with and without the answer term (answer_weight 0 is the control): with it, the
    summed FVU at answer positions (in the term's own space) of rows the run never saw ends lower."""
    from circuits.dictionaries.finetune import (
        answer_mask,
        clean_error_hooks,
        masked_fvu,
        name_logit_readout,
        name_token_ids,
    )

    cfg = dataclasses.replace(CFG, steps=20, encoder_lr_scale=0.0, keep_codes=True, calibrate_rows=0,
                              checkpoint_every=10, corpus_phases=(5,), answer_space=space)
    runs = {w: finetune_set(tiny_model, _load(base_set), dataclasses.replace(cfg, answer_weight=w),
                            tmp_path / f"w{w}", progress=False) for w in (0.0, 20.0)}
    stream = RowStream(tiny_model, dataclasses.replace(cfg, rows=32))
    tokens = stream.block(300)
    tok = stream.index.tokenizer
    ids = name_token_ids(tiny_model)
    mask = answer_mask(tokens, ids, tok.token_to_id("<|endoftext|>")).reshape(-1)
    assert mask.sum() >= 20, int(mask.sum())
    readout = name_logit_readout(tiny_model, _load(base_set), ids) if space == "name_logits" else None
    score = {}
    for w, dset in runs.items():
        errors: dict = {}
        with torch.no_grad():
            tiny_model.run_with_hooks(tokens, fwd_hooks=clean_error_hooks(dset, errors, readout))
        score[w] = sum(masked_fvu(e, t, mask).item() for e, t in errors.values())
    assert score[20.0] < 0.95 * score[0.0], score  # activation 0.89x, name logits 0.92x when written
    log = [json.loads(line) for line in (tmp_path / "w20.0" / "finetune_log.jsonl").read_text().splitlines()]
    assert all("answer_fvu" in r and r["answer_positions"] > 0 for r in log)


def test_name_logit_readout_is_the_direct_effect_on_centred_name_logits(tiny_model, base_set):
    """For an attention SAE on hook_z, ``v @ readout`` equals what adding v to hook_z does to the attention output
    (measured in the model), read by the centred name unembeddings; for a transcoder it is that read of v itself.
    Centred: a shift common to every name's logit reads as zero."""
    from circuits.dictionaries.finetune import name_logit_readout, name_token_ids

    dset = _load(base_set)
    ids = name_token_ids(tiny_model)
    readout = name_logit_readout(tiny_model, dset, ids)
    w_u = tiny_model.W_U[:, ids]
    w_u_c = w_u - w_u.mean(1, keepdim=True)
    tokens = _eval_tokens(tiny_model)[:1]
    g = torch.Generator().manual_seed(4)
    for d in dset:
        if d.cfg.kind == "attention_sae":
            v = torch.randn(d.cfg.d_out, generator=g)
            got = {}

            def add(z, hook, v=v):
                z = z.clone()
                z[0, 3] += v.reshape(z.shape[-2:])
                return z

            def grab(a, hook, key, got=got):
                got[key] = a[0, 3].clone()

            layer = d.cfg.layer
            with torch.no_grad():
                tiny_model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.hook_attn_out",
                                                              lambda a, hook: grab(a, hook, "clean"))])
                tiny_model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", add),
                                                             (f"blocks.{layer}.hook_attn_out",
                                                              lambda a, hook: grab(a, hook, "moved"))])
            torch.testing.assert_close(v @ readout[d.cfg.name], (got["moved"] - got["clean"]) @ w_u_c,
                                       rtol=1e-4, atol=1e-4)
        else:
            v = torch.randn(tiny_model.cfg.d_model, generator=g)
            torch.testing.assert_close(v @ readout[d.cfg.name], v @ w_u_c)
        r = readout[d.cfg.name]  # each row sums to zero over the names: a common shift reads as zero
        torch.testing.assert_close(r.sum(1), torch.zeros(r.shape[0]), rtol=0, atol=1e-4)
        assert r.abs().max() > 1e-3
