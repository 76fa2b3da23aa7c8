"""Interop with the real SAELens package (optional: ``pip install -e ".[interop]"``; skipped without it).

Invariants, both directions:

* a folder we write loads in SAELens (``SAE.load_from_disk``) as the class of the same maths, keeps our hook names
  and model name in ``metadata``, and computes bit-identical codes and outputs to ours loaded from the same folder
  (the same float operations in the same order);
* a folder written by SAELens's own ``save_model`` loads in ours with bit-identical codes and outputs, except an
  attention SAE with ``apply_b_dec_to_input: false``, whose bias is folded (≤ 1e-6 relative: float rounding);
* the shipped organism set reads in SAELens with its hook names, codes bit-identical on real activations.

Foreign configs we cannot compute exactly are refused with a message naming what is unsupported (these checks need
no SAELens).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from circuits.dictionaries.base import DictionaryConfig, make_dictionary
from circuits.dictionaries.io import (
    SAELENS_FORMAT_VERSION,
    DictionaryLoadError,
    load_dictionary,
    refresh_cfg,
    save_dictionary,
)

ROOT = Path(__file__).resolve().parents[1]
ORGANISM = ROOT / "data" / "dictionaries" / "organism"


@pytest.fixture(scope="module")
def sae_lens():
    return pytest.importorskip("sae_lens", reason="sae-lens is not installed (optional: pip install -e '.[interop]')")


def _random(cfg: DictionaryConfig, seed: int = 0):
    torch.manual_seed(seed)
    d = make_dictionary(cfg)
    with torch.no_grad():
        for name, p in d.named_parameters():
            if "threshold" in name:
                p.uniform_(0.0, 0.3)
            else:
                p.normal_(0, 0.3)
    return d.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


N_HEADS, D_HEAD = 4, 4
D = N_HEADS * D_HEAD
OURS = [
    DictionaryConfig("attention_sae", 1, D, 48, D, activation="relu", k=None, n_heads=N_HEADS, model_name="tiny"),
    DictionaryConfig("attention_sae", 1, D, 48, D, activation="topk", k=5, n_heads=N_HEADS, model_name="tiny"),
    DictionaryConfig("attention_sae", 1, D, 48, D, activation="jumprelu", k=None, n_heads=N_HEADS, model_name="tiny"),
    DictionaryConfig("attention_sae", 1, D, 48, D, activation="batchtopk", k=5, n_heads=N_HEADS, model_name="tiny"),
    DictionaryConfig("transcoder", 2, D, 48, D, activation="relu", k=None, model_name="tiny"),
    DictionaryConfig("transcoder", 2, D, 48, D, activation="jumprelu", k=None, model_name="tiny"),
    DictionaryConfig("transcoder", 2, D, 48, D, activation="batchtopk", k=5, model_name="tiny"),
    DictionaryConfig("transcoder", 2, D, 48, D, activation="relu", k=None, model_name="tiny", skip=True),
    DictionaryConfig("transcoder", 2, D, 48, D, activation="jumprelu", k=None, model_name="tiny", skip=True),
]
SAELENS_CLASS = {"standard": "StandardSAE", "topk": "TopKSAE", "jumprelu": "JumpReLUSAE", "transcoder": "Transcoder",
                 "jumprelu_transcoder": "JumpReLUTranscoder", "skip_transcoder": "SkipTranscoder",
                 "jumprelu_skip_transcoder": "JumpReLUSkipTranscoder"}


def _their_outputs(sae, x_flat: torch.Tensor, attention: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """SAELens codes and outputs [N, d] on flat inputs (hook_z SAEs take [N, n_heads, d_head])."""
    x = x_flat.reshape(-1, N_HEADS, D_HEAD) if attention else x_flat
    with torch.no_grad():
        codes, out = sae.encode(x), sae(x)
    return codes, out.reshape(x_flat.shape[0], -1)


@pytest.mark.parametrize("cfg", OURS, ids=lambda c: f"{c.kind}-{c.activation}{'-skip' if c.skip else ''}")
def test_our_folder_in_saelens(sae_lens, cfg, tmp_path):
    d = _random(cfg)
    if cfg.kind == "transcoder":
        with torch.no_grad():
            d.b_in_param.normal_(0, 0.3)  # folded into b_enc on save
    folder = save_dictionary(d, tmp_path / cfg.name)
    sae = sae_lens.SAE.load_from_disk(str(folder))
    raw = json.loads((folder / "cfg.json").read_text())
    assert type(sae).__name__ == SAELENS_CLASS[raw["architecture"]]
    meta = sae.cfg.metadata
    assert meta.sae_lens_version == SAELENS_FORMAT_VERSION
    assert (meta.hook_name, meta.model_name, meta.context_size) == (cfg.hook_in, "tiny", cfg.context_size)
    assert meta.hook_name_out == (cfg.hook_out if cfg.kind == "transcoder" else None)
    if cfg.activation in ("topk",):
        assert sae.cfg.k == cfg.k

    back = load_dictionary(folder)
    x = torch.randn(64, D)
    codes, out = _their_outputs(sae, x, cfg.kind == "attention_sae")
    with torch.no_grad():
        ours = back(x)
        orig = d(x)
    assert (codes > 0).any() and (codes == 0).any()
    assert torch.equal(codes, ours.codes) and torch.equal(out, ours.output)  # same maths, same float operations
    # against the in-memory original: exact but for a transcoder's input centering folded into b_enc (rounding)
    assert _rel(ours.codes, orig.codes) <= (1e-6 if cfg.kind == "transcoder" else 0.0)
    assert _rel(ours.output, orig.output) <= (1e-6 if cfg.kind == "transcoder" else 0.0)


def test_topk_transcoder_is_refused_by_saelens(sae_lens, tmp_path):
    """SAELens 6 has no TopK transcoder: it must refuse the folder, not read it as a ReLU transcoder."""
    cfg = DictionaryConfig("transcoder", 0, D, 48, D, activation="topk", k=5, model_name="tiny")
    folder = save_dictionary(_random(cfg), tmp_path / "tc")
    assert json.loads((folder / "cfg.json").read_text())["architecture"] == "topk_transcoder"
    with pytest.raises(Exception, match="topk_transcoder"):
        sae_lens.SAE.load_from_disk(str(folder))
    assert torch.equal(load_dictionary(folder).W_enc, _random(cfg).W_enc)  # ours reads it


def _their_sae(sae_lens, arch: str, apply_b_dec: bool = True, seed: int = 0):
    """A SAELens SAE of `arch` built from its config class, random weights, negative thresholds included."""
    from sae_lens.saes.sae import SAEMetadata

    attention = "transcoder" not in arch
    meta = SAEMetadata(model_name="gpt2", context_size=64,
                       hook_name="blocks.1.attn.hook_z" if attention else "blocks.2.ln2.hook_normalized",
                       hook_name_out=None if attention else "blocks.2.hook_mlp_out")
    cls, cfg_cls = (getattr(sae_lens, SAELENS_CLASS[arch]), getattr(sae_lens, SAELENS_CLASS[arch] + "Config"))
    kwargs = dict(d_in=D, d_sae=48, metadata=meta)
    if attention:
        kwargs.update(reshape_activations="hook_z", apply_b_dec_to_input=apply_b_dec)
    else:
        kwargs.update(d_out=D, apply_b_dec_to_input=False)  # SAELens refuses True for transcoders
    if arch == "topk":
        kwargs["k"] = 5
    sae = cls(cfg_cls(**kwargs))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.rand_like(p) * 0.4 - 0.1 if name == "threshold" else torch.randn_like(p) * 0.3)
    return sae.eval()


THEIRS = [("standard", True), ("standard", False), ("topk", True), ("jumprelu", True), ("transcoder", True),
          ("jumprelu_transcoder", True), ("skip_transcoder", True), ("jumprelu_skip_transcoder", True)]


@pytest.mark.parametrize(("arch", "apply_b_dec"), THEIRS, ids=lambda v: str(v))
def test_saelens_folder_in_ours(sae_lens, arch, apply_b_dec, tmp_path):
    sae = _their_sae(sae_lens, arch, apply_b_dec)
    sae.save_model(str(tmp_path / "sae"))
    ours = load_dictionary(tmp_path / "sae", n_heads=N_HEADS)
    attention = "transcoder" not in arch
    c = ours.cfg
    assert c.kind == ("attention_sae" if attention else "transcoder") and c.model_name == "gpt2"
    assert c.layer == (1 if attention else 2) and c.skip == ("skip" in arch) and c.context_size == 64
    assert c.activation == {"standard": "relu", "topk": "topk"}.get(arch, "jumprelu" if "jumprelu" in arch else "relu")
    x = torch.randn(64, D)
    codes, out = _their_outputs(sae, x, attention)
    with torch.no_grad():
        mine = ours(x)
    assert (codes > 0).any() and (codes == 0).any()
    if apply_b_dec:
        assert torch.equal(mine.codes, codes) and torch.equal(mine.output, out)
    else:  # x @ W_enc + b_enc computed as (x − b_dec) @ W_enc + (b_enc + b_dec @ W_enc): float rounding only
        assert _rel(mine.codes, codes) <= 1e-6 and _rel(mine.output, out) <= 1e-6
    if "jumprelu" in arch:
        assert (sae.threshold < 0).any()  # the clamp θ → max(θ, 0) is exercised (SAELens applies ReLU first)


def _shipped_members() -> list[Path]:
    """Every per-layer dictionary folder of the shipped sets (organism, and organism-skip when present)."""
    out = []
    for set_json in sorted((ROOT / "data" / "dictionaries").glob("*/set.json")):
        for name in json.loads(set_json.read_text())["dictionaries"]:  # members may be "../organism/attn_sae_L0"
            folder = (set_json.parent / name).resolve()
            raw = json.loads((folder / "cfg.json").read_text())
            if raw.get("circuits", {}).get("kind") != "cross_layer_transcoder" and folder not in out:
                out.append(folder)
    return out


def test_organism_set_in_saelens(sae_lens):
    """The shipped sets: hook names kept, codes and outputs bit-identical on the organism's own activations."""
    from circuits import load_model

    model, _ = load_model("organism")
    tokens = model.to_tokens("When Mary and John went to the store, John gave a drink to")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    members = _shipped_members()
    assert (ORGANISM / "transcoder_L0").resolve() in members
    for folder in members:
        name = str(folder.relative_to(ROOT))
        ours = load_dictionary(folder)
        sae = sae_lens.SAE.load_from_disk(str(folder))
        meta = sae.cfg.metadata
        assert (meta.hook_name, meta.model_name) == (ours.cfg.hook_in, "organism"), name
        assert meta.hook_name_out == (ours.cfg.hook_out if ours.cfg.kind == "transcoder" else None), name
        act = cache[ours.cfg.hook_in][0]  # [pos, d] or [pos, n_heads, d_head]
        with torch.no_grad():
            mine = ours(ours.flatten_input(act))
            codes, out = sae.encode(act), sae(act)
        assert (mine.codes > 0).any(), name
        assert torch.equal(codes, mine.codes), name
        assert torch.equal(out.reshape(mine.output.shape), mine.output), name


def test_refresh_cfg_keeps_our_block_and_weights(tmp_path):
    cfg = DictionaryConfig("attention_sae", 0, D, 48, D, activation="batchtopk", k=5, n_heads=N_HEADS)
    folder = save_dictionary(_random(cfg), tmp_path / "a")
    before = (folder / "sae_weights.safetensors").read_bytes()
    raw = json.loads((folder / "cfg.json").read_text())
    del raw["metadata"]["sae_lens_version"]
    (folder / "cfg.json").write_text(json.dumps(raw))
    refresh_cfg(folder)
    again = json.loads((folder / "cfg.json").read_text())
    assert again["metadata"]["sae_lens_version"] == SAELENS_FORMAT_VERSION
    assert again["circuits"]["trained_activation"] == "batchtopk" and again["architecture"] == "jumprelu"
    assert (folder / "sae_weights.safetensors").read_bytes() == before


def test_shipped_configs_are_current():
    """Every shipped cfg.json is what `saelens_cfg` writes today (run `refresh_set` when this fails)."""
    from circuits.dictionaries.io import saelens_cfg

    for cfg_path in sorted(folder / "cfg.json" for folder in _shipped_members()):
        raw = json.loads(cfg_path.read_text())
        fields = dict(raw["circuits"])
        fields["activation"] = fields.pop("trained_activation")
        assert raw == saelens_cfg(DictionaryConfig(**fields)), cfg_path


# ---- foreign configs we cannot compute exactly: refused, with the reason (no SAELens needed) -------------------


def _foreign(tmp_path, **changes) -> Path:
    cfg = DictionaryConfig("attention_sae", 1, D, 48, D, activation="relu", k=None, n_heads=N_HEADS)
    folder = save_dictionary(_random(cfg), tmp_path / "f")
    raw = json.loads((folder / "cfg.json").read_text())
    del raw["circuits"]
    for key, value in changes.items():
        if key.startswith("meta_"):
            raw["metadata"][key[5:]] = value
        else:
            raw[key] = value
    (folder / "cfg.json").write_text(json.dumps(raw))
    return folder


@pytest.mark.parametrize(("changes", "message"), [
    ({"architecture": "gated"}, "architecture 'gated' is not supported"),
    ({"normalize_activations": "expected_average_only_in"}, "normalize_activations 'expected_average_only_in'"),
    ({"meta_hook_head_index": 3}, "hook_head_index 3"),
    ({"architecture": "topk", "k": 4, "rescale_acts_by_decoder_norm": True}, "rescale_acts_by_decoder_norm"),
    ({"architecture": "transcoder", "d_out": D, "meta_hook_name": "blocks.1.hook_resid_mid"},
     "only blocks.L.ln2.hook_normalized"),
    ({"architecture": "transcoder", "d_out": D, "meta_hook_name": "blocks.1.ln2.hook_normalized",
      "meta_hook_name_out": "blocks.1.hook_resid_post"}, "'blocks.1.hook_resid_post'"),
    ({"meta_hook_name": "blocks.1.hook_resid_pre"}, "neither ln2.hook_normalized nor attn.hook_z"),
])
def test_unsupported_foreign_configs_are_refused(tmp_path, changes, message):
    folder = _foreign(tmp_path, **changes)
    with pytest.raises(DictionaryLoadError, match=message.replace("(", r"\(")):
        load_dictionary(folder, n_heads=N_HEADS)


def test_pre_6_config_is_read(tmp_path):
    """A pre-6.0 config (keys at top level, hook_point, activation_fn_kwargs) reads as the same dictionary."""
    folder = _foreign(tmp_path)
    raw = json.loads((folder / "cfg.json").read_text())
    meta = raw.pop("metadata")
    raw.pop("architecture")
    raw.update(hook_point=meta["hook_name"], model_name="other", context_size=32, activation_fn_str="relu",
               normalize_activations=False)
    (folder / "cfg.json").write_text(json.dumps(raw))
    d = load_dictionary(folder, n_heads=N_HEADS)
    c = d.cfg
    assert (c.kind, c.layer, c.activation, c.context_size, c.model_name) == ("attention_sae", 1, "relu", 32, "other")
    assert torch.equal(d.W_enc, _random(DictionaryConfig("attention_sae", 1, D, 48, D, activation="relu", k=None,
                                                        n_heads=N_HEADS)).W_enc)
