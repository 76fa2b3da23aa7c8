"""Reading and writing dictionaries.

Our on-disk layout *is* the SAELens v6 layout, so SAELens can read a set we write:

    <set>/<name>/cfg.json                  SAELens config (architecture, d_in, d_sae, [d_out], metadata, ...)
    <set>/<name>/sae_weights.safetensors   W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_out],
                                           threshold [d_sae] for JumpReLU, W_skip [d_out, d_in] for skip transcoders
    <set>/clt/                             a cross-layer transcoder (`save_clt`): cfg.json + circuit-tracer's files
    <set>/set.json                         the set: model name, member folders in splice order

Our own fields (kind, layer, n_heads, k, training activation) sit in cfg.json under ``"circuits"``; SAELens ignores
unknown keys. ``metadata.sae_lens_version`` is `SAELENS_FORMAT_VERSION`: without it SAELens 6 takes a config for a
pre-6.0 one and rebuilds ``metadata`` from top-level keys, losing ``hook_name``, ``model_name`` and the rest.
A transcoder's input centering has no SAELens field, so it is folded into the encoder bias on save
(``b_enc' = b_enc − b_in @ W_enc``, exact up to float rounding) and loads back as ``b_in = 0``. A BatchTopK
dictionary is saved as JumpReLU with its learned threshold (its inference-time form), as SAELens does.

SAELens computes the same codes as we do (same operations, same order) for every architecture we write except a
TopK *transcoder*: SAELens 6 has none, so it is written as ``topk_transcoder`` / ``topk_skip_transcoder``, names
SAELens refuses (rather than silently computing ReLU codes). SAELens's JumpReLU is ``relu(pre) · 1[pre > θ]``, ours
``pre · 1[pre > θ]``: equal for θ ≥ 0 (ours are), and a foreign threshold θ < 0 is read as 0, which is exact.

Every loader validates before returning: tensor names, shapes, finiteness, threshold presence; failures raise
`DictionaryLoadError` naming the file and the mismatch. Nothing partially loaded is returned.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import Tensor

from circuits.dictionaries.base import Dictionary, DictionaryConfig, make_dictionary
from circuits.errors import CircuitsError, DictionaryLoadError  # noqa: F401  (re-exported here, as before)

WEIGHTS_FILE = "sae_weights.safetensors"
CFG_FILE = "cfg.json"


#: ``metadata.sae_lens_version`` in the cfg.json files we write: the SAELens config format (6.x) they follow. A
#: constant, not the installed SAELens version, so files do not change with the environment that wrote them.
SAELENS_FORMAT_VERSION = "6.0.0"


def saelens_architecture(c: DictionaryConfig) -> str:
    """SAELens's ``architecture`` name for a dictionary of config `c` (the class SAELens builds from cfg.json)."""
    jump = c.activation in ("jumprelu", "batchtopk")
    if c.kind == "transcoder":
        base = "skip_transcoder" if c.skip else "transcoder"
        if jump:
            return f"jumprelu_{base}"
        return f"topk_{base}" if c.activation == "topk" else base  # topk_*: no such SAELens class (it refuses)
    return {"relu": "standard", "topk": "topk"}.get(c.activation, "jumprelu")


def saelens_metadata(c: DictionaryConfig) -> dict:
    """SAELens 6 ``metadata`` (its LLM keys: model, hooks, tokenization) for a dictionary of config `c`."""
    meta = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": None,
        "model_name": c.model_name,
        "model_class_name": "HookedTransformer",
        "model_from_pretrained_kwargs": {},
        "hook_name": c.hook_in,
        "hook_head_index": None,
        "prepend_bos": True,
        "exclude_special_tokens": False,
        "context_size": c.context_size,
        "seqpos_slice": [None],
        "dataset_path": "circuits toy-world corpus" if c.model_name == "organism" else None,
        "neuronpedia_id": None,
    }
    if c.kind == "transcoder":
        meta["hook_name_out"] = c.hook_out
        meta["hook_head_index_out"] = None
    return meta


def saelens_cfg(c: DictionaryConfig) -> dict:
    """The cfg.json of a dictionary of config `c`: every field SAELens 6 reads, plus our "circuits" block."""
    saved_activation = "jumprelu" if c.activation == "batchtopk" else c.activation
    cfg = {
        "architecture": saelens_architecture(c),
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": c.kind == "attention_sae",
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if c.kind == "attention_sae" else "none",
        "metadata": saelens_metadata(c),
        "circuits": {**c.to_dict(), "activation": saved_activation, "trained_activation": c.activation},
    }
    if c.kind == "transcoder":
        cfg["d_out"] = c.d_out
    if saved_activation == "topk":
        cfg["k"] = c.k
        cfg["rescale_acts_by_decoder_norm"] = False
    return cfg


def write_cfg(folder: Path, cfg: dict) -> Path:
    """Write cfg.json atomically (also used alone to refresh the configs of saved folders: weights untouched)."""
    tmp = Path(folder) / (CFG_FILE + ".tmp")
    tmp.write_text(json.dumps(cfg, indent=2))
    tmp.replace(Path(folder) / CFG_FILE)
    return Path(folder) / CFG_FILE


def refresh_cfg(folder: Path) -> Path:
    """Rewrite a saved folder's cfg.json from its "circuits" block with today's `saelens_cfg` (weights untouched).

    How the shipped sets' configs are brought up to date when the SAELens fields we write change:
    ``python -c "from circuits.dictionaries.io import refresh_set; refresh_set('data/dictionaries/organism')"``."""
    cfg_path = Path(folder) / CFG_FILE
    raw = read_json(cfg_path)
    fields = dict(raw.get("circuits") or {})
    if not fields or fields.get("kind") == "cross_layer_transcoder":
        raise DictionaryLoadError(f"{cfg_path}: not one of our per-layer dictionary folders (no 'circuits' block)")
    fields["activation"] = fields.pop("trained_activation", fields.get("activation"))
    try:
        cfg = DictionaryConfig(**fields)
    except (TypeError, ValueError) as e:
        raise DictionaryLoadError(f"{cfg_path}: bad 'circuits' block ({e})") from None
    return write_cfg(folder, saelens_cfg(cfg))


def refresh_set(folder: Path) -> list[Path]:
    """`refresh_cfg` for every per-layer dictionary of a saved set (``set.json``); returns the files written."""
    members = read_json(Path(folder) / "set.json").get("dictionaries", [])
    return [refresh_cfg(Path(folder) / m) for m in members
            if (read_json(Path(folder) / m / CFG_FILE).get("circuits") or {}).get("kind") != "cross_layer_transcoder"]


def save_dictionary(d: Dictionary, folder: Path) -> Path:
    """Write one dictionary as a SAELens folder (atomic per file)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        b_enc = d.b_enc - d.b_in @ d.W_enc if d.cfg.kind == "transcoder" else d.b_enc
        tensors = {"W_enc": d.W_enc, "b_enc": b_enc, "W_dec": d.W_dec, "b_dec": d.b_dec}
        if d.cfg.activation in ("jumprelu", "batchtopk"):
            tensors["threshold"] = d.activation.threshold
        if d.W_skip is not None:
            tensors["W_skip"] = d.W_skip
        tensors = {k: v.detach().float().contiguous().clone() for k, v in tensors.items()}
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(folder / WEIGHTS_FILE)
    write_cfg(folder, saelens_cfg(d.cfg))
    return folder


def store_float16(folder: Path) -> int:
    """Rewrite every ``*.safetensors`` under `folder` with its tensors in float16 (how the organism's shipped sets
    are stored: half the bytes; loading reads them back as float32). Returns the number of files rewritten."""
    from safetensors.torch import load_file, save_file

    files = sorted(Path(folder).rglob("*.safetensors"))
    for f in files:
        tmp = f.with_name(f.name + ".tmp")
        save_file({k: v.half().contiguous() for k, v in load_file(str(f)).items()}, str(tmp))
        tmp.replace(f)
    return len(files)


def validate_tensors(tensors: dict[str, Tensor], cfg: DictionaryConfig, source: Path) -> None:
    """Shapes, finiteness and JumpReLU threshold presence; raises DictionaryLoadError."""
    expected = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,), "W_dec": (cfg.d_sae, cfg.d_out),
                "b_dec": (cfg.d_out,)}
    if cfg.activation == "jumprelu":
        expected["threshold"] = (cfg.d_sae,)
    if cfg.skip:
        expected["W_skip"] = (cfg.d_out, cfg.d_in)
    elif "W_skip" in tensors:
        raise DictionaryLoadError(f"{source}: has W_skip but its config is not a skip transcoder")
    for name, shape in expected.items():
        if name not in tensors:
            what = "a JumpReLU dictionary without its threshold" if name == "threshold" else f"no tensor {name!r}"
            raise DictionaryLoadError(f"{source}: {what}; found {sorted(tensors)}")
        if tuple(tensors[name].shape) != shape:
            raise DictionaryLoadError(
                f"{source}: tensor {name} has shape {tuple(tensors[name].shape)}, expected {shape} from the config"
            )
        if not torch.isfinite(tensors[name]).all():
            raise DictionaryLoadError(f"{source}: tensor {name} contains NaN or inf values")


def dictionary_from_tensors(cfg: DictionaryConfig, tensors: dict[str, Tensor], source: Path,
                            b_in: Tensor | None = None) -> Dictionary:
    """Build a dictionary from validated tensors (float32)."""
    validate_tensors(tensors, cfg, source)
    d = make_dictionary(cfg)
    with torch.no_grad():
        d.W_enc.copy_(tensors["W_enc"])
        d.b_enc.copy_(tensors["b_enc"])
        d.W_dec.copy_(tensors["W_dec"])
        d.b_dec.copy_(tensors["b_dec"])
        if "threshold" in tensors and hasattr(d.activation, "threshold"):
            d.activation.threshold.copy_(tensors["threshold"])
        if d.W_skip is not None:
            d.W_skip.copy_(tensors["W_skip"])
        if b_in is not None:
            d.b_in_param.copy_(b_in)
    d.eval()
    return d


#: Known head counts for public models whose attention SAEs do not store n_heads.
KNOWN_N_HEADS: dict[str, int] = {"gpt2-small": 12, "gpt2": 12}


def n_heads_for(model_name: str, n_heads: int | None, source: Path) -> int:
    """The head count of an attention SAE's model: given, known for the model name, or an error."""
    if n_heads:
        return n_heads
    if model_name in KNOWN_N_HEADS:
        return KNOWN_N_HEADS[model_name]
    raise DictionaryLoadError(f"{source}: an attention SAE for model {model_name!r} needs the number of heads; "
                              "pass n_heads (CLI: --n-heads)")


def read_json(path: Path) -> dict:
    """A JSON file, or DictionaryLoadError naming it."""
    if not path.exists():
        raise DictionaryLoadError(f"missing dictionary file {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DictionaryLoadError(f"{path}: not valid JSON ({e})") from None


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """A safetensors file as float32 tensors, or DictionaryLoadError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.exists():
        raise DictionaryLoadError(f"missing dictionary file {path}")
    try:
        return {k: v.float() for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError, RuntimeError) as e:
        raise DictionaryLoadError(f"{path}: truncated or not a safetensors file ({e})") from None


def load_dictionary(folder: Path, n_heads: int | None = None) -> Dictionary:
    """Load one SAELens-layout folder, ours or anyone's (`n_heads` for a foreign attention SAE on hook_z)."""
    folder = Path(folder)
    cfg_path, w_path = folder / CFG_FILE, folder / WEIGHTS_FILE
    raw = read_json(cfg_path)
    if isinstance(raw, dict) and raw.get("circuits", {}).get("kind") == "cross_layer_transcoder":
        return load_clt(folder)
    tensors = read_safetensors(w_path)
    cfg = config_from_saelens(raw, cfg_path, n_heads)
    if "circuits" not in raw:
        cfg, tensors = _foreign_saelens_tensors(raw, cfg, tensors, w_path)
    return dictionary_from_tensors(cfg, tensors, w_path)


#: SAELens 6 inference architectures we read: the ones whose maths is ours (see the module docstring), plus the
#: names we write for TopK transcoders (which SAELens does not have).
SAELENS_ARCHITECTURES = ("standard", "topk", "jumprelu", "transcoder", "skip_transcoder", "jumprelu_transcoder",
                         "jumprelu_skip_transcoder")
READABLE_ARCHITECTURES = SAELENS_ARCHITECTURES + ("topk_transcoder", "topk_skip_transcoder")


def _foreign_saelens_tensors(raw: dict, cfg: DictionaryConfig, tensors: dict[str, Tensor],
                             source: Path) -> tuple[DictionaryConfig, dict[str, Tensor]]:
    """Map a folder written by SAELens (or anyone, no "circuits" block) onto our maths, exactly where possible.

    * W_skip present → a skip transcoder whatever the architecture says (SAELens reads it the same way);
    * JumpReLU θ < 0 → 0: SAELens computes ``relu(pre) · 1[pre > θ]``, which is ``pre · 1[pre > max(θ, 0)]``;
    * an attention SAE with ``apply_b_dec_to_input: false`` encodes ``x @ W_enc + b_enc``; ours always centres by
      b_dec, so ``b_dec @ W_enc`` is added to b_enc (the same function; codes equal up to float rounding)."""
    if "W_skip" in tensors and not cfg.skip:
        cfg = dataclasses.replace(cfg, skip=True)
    if cfg.activation == "jumprelu" and "threshold" in tensors:
        tensors = {**tensors, "threshold": tensors["threshold"].clamp_min(0.0)}
    if cfg.kind == "attention_sae" and raw.get("apply_b_dec_to_input") is False:
        validate_tensors(tensors, cfg, source)
        tensors = {**tensors, "b_enc": tensors["b_enc"] + tensors["b_dec"] @ tensors["W_enc"]}
    return cfg, tensors


def config_from_saelens(raw: dict, source: Path, n_heads: int | None = None) -> DictionaryConfig:
    """Our config from a SAELens cfg.json (our own "circuits" block when present).

    A foreign config (SAELens 6, or pre-6.0 with its keys at top level) must describe something we can splice with
    the same maths: a transcoder ``blocks.L.ln2.hook_normalized → blocks.L.hook_mlp_out`` or an SAE on
    ``blocks.L.attn.hook_z``, one of `SAELENS_ARCHITECTURES`, no activation normalization, no head index; anything
    else raises `DictionaryLoadError` saying what is not supported."""
    if not isinstance(raw, dict) or "d_in" not in raw or "d_sae" not in raw:
        raise DictionaryLoadError(f"{source}: not a SAELens cfg.json (no d_in / d_sae)")
    if "circuits" in raw:
        fields = dict(raw["circuits"])
        fields.pop("trained_activation", None)
        try:
            return DictionaryConfig(**fields)
        except (TypeError, ValueError) as e:
            raise DictionaryLoadError(f"{source}: bad 'circuits' block ({e})") from None
    from circuits.model import hook_ln2_normalized, hook_mlp_out, parse_layer

    meta = {**raw, **(raw.get("metadata") or {})}  # SAELens 6 keeps these in metadata, earlier versions at top level
    hook = str(meta.get("hook_name") or meta.get("hook_point") or "")
    arch = raw.get("architecture")
    fn = raw.get("activation_fn") or raw.get("activation_fn_str")
    k = raw.get("k") or (raw.get("activation_fn_kwargs") or {}).get("k")
    if arch is None:  # a pre-6.0 config
        arch = "topk" if fn == "topk" and k else ("transcoder" if raw.get("d_out") else "standard")
    if arch.startswith("topk") and not k:
        k = 100  # SAELens's TopKSAEConfig default
    if arch not in READABLE_ARCHITECTURES:
        raise DictionaryLoadError(f"{source}: SAELens architecture {arch!r} is not supported (only "
                                  f"{', '.join(SAELENS_ARCHITECTURES)}: the ones whose codes we compute exactly)")
    norm = raw.get("normalize_activations") or "none"
    if norm not in ("none", False):
        raise DictionaryLoadError(f"{source}: normalize_activations {norm!r} is not supported (only 'none'); fold "
                                  "the normalization into the weights first")
    if meta.get("hook_head_index") is not None:
        raise DictionaryLoadError(f"{source}: an SAE on one head (hook_head_index {meta['hook_head_index']}) cannot "
                                  "be spliced; only SAEs on every head of attn.hook_z")
    if raw.get("rescale_acts_by_decoder_norm"):
        raise DictionaryLoadError(f"{source}: rescale_acts_by_decoder_norm is not supported (TopK on rescaled "
                                  "pre-activations)")
    try:
        layer = parse_layer(hook)
    except ValueError:
        layer = None
    if "transcoder" in arch:
        out = meta.get("hook_name_out")
        if layer is None or hook != hook_ln2_normalized(layer) or (out is not None and out != hook_mlp_out(layer)):
            raise DictionaryLoadError(f"{source}: a transcoder from {hook!r} to {out!r}; only blocks.L.ln2."
                                      "hook_normalized → blocks.L.hook_mlp_out transcoders can be spliced")
        kind = "transcoder"
    elif layer is not None and hook.endswith("attn.hook_z"):
        kind = "attention_sae"
    else:
        raise DictionaryLoadError(f"{source}: hook {hook!r} is neither ln2.hook_normalized nor attn.hook_z; "
                                  "only transcoders and attention-output SAEs can be spliced")
    activation = "jumprelu" if "jumprelu" in arch else ("topk" if arch.startswith("topk") else "relu")
    model_name = str(meta.get("model_name") or "unknown")
    try:
        return DictionaryConfig(
            kind=kind, layer=layer, d_in=int(raw["d_in"]), d_sae=int(raw["d_sae"]),
            d_out=int(raw.get("d_out") or raw["d_in"]), activation=activation,
            k=int(k) if activation == "topk" and k else None,
            n_heads=n_heads_for(model_name, n_heads, source) if kind == "attention_sae" else None,
            context_size=int(meta.get("context_size") or 128), model_name=model_name,
            skip="skip_transcoder" in arch,
        )
    except ValueError as e:
        raise DictionaryLoadError(f"{source}: {e}") from None


# ---------------------------------------------------------------------------------------------------------------
# Cross-layer transcoders: circuit-tracer's file layout plus our cfg.json
# ---------------------------------------------------------------------------------------------------------------

CLT_FORMAT = "circuits-clt/1"


def save_clt(clt, folder: Path) -> Path:
    """Write a cross-layer transcoder as one folder in circuit-tracer's CLT layout, plus our ``cfg.json``:

    ``W_enc_{l}.safetensors``: ``W_enc_{l} [d_sae, d_model]`` (circuit-tracer's orientation), ``b_enc_{l}`` (input
    centering folded in), ``b_dec_{l}`` (layer l's output bias), ``threshold_{l}`` for JumpReLU / BatchTopK;
    ``W_dec_{l}.safetensors``: ``W_dec_{l} [d_sae, n_layers − l, d_model]``. A ``config.yaml`` is written too
    when circuit-tracer computes the same codes (ReLU or JumpReLU), so its own ``load_clt`` reads the folder.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = clt.cfg
    saved_activation = "jumprelu" if c.activation == "batchtopk" else c.activation
    for layer in clt.layers:
        i = layer.cfg.layer
        with torch.no_grad():
            enc = {f"W_enc_{i}": layer.W_enc.T, f"b_enc_{i}": layer.b_enc - layer.b_in @ layer.W_enc,
                   f"b_dec_{i}": layer.b_dec}
            if saved_activation == "jumprelu":
                enc[f"threshold_{i}"] = layer.activation.threshold
            dec = {f"W_dec_{i}": layer.W_dec_out}
            for name, tensors in ((f"W_enc_{i}", enc), (f"W_dec_{i}", dec)):
                tensors = {k: v.detach().float().contiguous().clone() for k, v in tensors.items()}
                tmp = folder / f"{name}.safetensors.tmp"
                save_file(tensors, str(tmp))
                tmp.replace(folder / f"{name}.safetensors")
    cfg = {"format": CLT_FORMAT, "circuits": {**c.to_dict(), "activation": saved_activation,
                                              "trained_activation": c.activation},
           "hook_name": "blocks.{l}.ln2.hook_normalized", "hook_name_out": "blocks.{l}.hook_mlp_out"}
    (folder / CFG_FILE).write_text(json.dumps(cfg, indent=2))
    if saved_activation in ("relu", "jumprelu"):
        (folder / "config.yaml").write_text(
            f"model_kind: cross_layer_transcoder\nmodel_name: {c.model_name}\n"
            "feature_input_hook: ln2.hook_normalized\nfeature_output_hook: hook_mlp_out\n")
    return folder


def load_clt(folder: Path):
    """One of our CLT folders (`save_clt`): cfg.json with a "circuits" block of kind cross_layer_transcoder."""
    from circuits.dictionaries.clt import CLTConfig

    folder = Path(folder)
    raw = read_json(folder / CFG_FILE)
    fields = dict(raw.get("circuits", {}))
    fields.pop("trained_activation", None)
    fields.pop("kind", None)
    try:
        cfg = CLTConfig(**fields)
    except (TypeError, ValueError) as e:
        raise DictionaryLoadError(f"{folder / CFG_FILE}: bad cross-layer transcoder config ({e})") from None
    return clt_from_circuit_tracer_files(folder, cfg)


def clt_from_circuit_tracer_files(folder: Path, cfg):
    """Build a CLT from circuit-tracer's files in `folder` (checked against `cfg`: layers, shapes, threshold)."""
    from circuits.dictionaries.clt import CrossLayerTranscoder

    folder = Path(folder)
    n, d_model, d_sae = cfg.n_layers, cfg.d_model, cfg.d_sae
    clt = CrossLayerTranscoder(cfg)
    for i in range(n):
        enc_path, dec_path = folder / f"W_enc_{i}.safetensors", folder / f"W_dec_{i}.safetensors"
        enc, dec = read_safetensors(enc_path), read_safetensors(dec_path)
        extra = sorted(k for k in enc if k.startswith("W_skip"))
        if extra:
            raise DictionaryLoadError(f"{enc_path}: cross-layer transcoders with a skip connection are not supported")
        want = {f"W_enc_{i}": (enc, enc_path, (d_sae, d_model)), f"b_enc_{i}": (enc, enc_path, (d_sae,)),
                f"b_dec_{i}": (enc, enc_path, (d_model,)), f"W_dec_{i}": (dec, dec_path, (d_sae, n - i, d_model))}
        if cfg.activation == "jumprelu":
            want[f"threshold_{i}"] = (enc, enc_path, (d_sae,))
        for name, (tensors, path, shape) in want.items():
            if name not in tensors:
                what = "a JumpReLU CLT without its threshold" if name.startswith("threshold") else f"no {name!r}"
                raise DictionaryLoadError(f"{path}: {what}; found {sorted(tensors)}")
            t = tensors[name]
            if name.startswith("threshold"):
                t = t.reshape(-1)  # circuit-tracer writes [d_sae]; its in-memory form is [1, d_sae]
            if tuple(t.shape) != shape:
                raise DictionaryLoadError(f"{path}: tensor {name} has shape {tuple(t.shape)}, expected {shape}")
            if not torch.isfinite(t).all():
                raise DictionaryLoadError(f"{path}: tensor {name} contains NaN or inf values")
            tensors[name] = t
        layer = clt[i]
        with torch.no_grad():
            layer.W_enc.copy_(enc[f"W_enc_{i}"].T)
            layer.b_enc.copy_(enc[f"b_enc_{i}"])
            layer.b_dec.copy_(enc[f"b_dec_{i}"])
            layer.W_dec_out.copy_(dec[f"W_dec_{i}"])
            if cfg.activation == "jumprelu":
                layer.activation.threshold.copy_(enc[f"threshold_{i}"])
    if (folder / f"W_enc_{n}.safetensors").exists():
        raise DictionaryLoadError(f"{folder}: has W_enc_{n}.safetensors but the config says {n} layers")
    return clt.eval()
