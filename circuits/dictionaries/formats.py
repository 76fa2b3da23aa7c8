"""Readers for public dictionary formats (facts from ../shared/FORMATS.md), all converted to our classes.

* Dunefsky GPT-2 transcoders: a ``torch.save`` of ``{"cfg": <their pickled config object>, "state_dict": ...}``.
  The config class lives in their package (``sae_training``), which we never import: the file is read with
  ``torch.load(weights_only=True)`` after telling torch's restricted unpickler that every foreign class in the
  file is a harmless `_ForeignObject` (a plain record of the fields it is given). Nothing else is allowed.
  ``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_out]``, ``b_dec`` (input centering), ``b_dec_out``.
* Kissane GPT-2 attention SAEs: a raw state dict ``.pt`` (``W_enc, W_dec, b_enc, b_dec``) + ``<stem>_cfg.json``
  (``act_name``, ``act_size``, ``dict_size``, ``layer``, ...); ReLU; input centered by ``b_dec``.
* SAELens folders: `circuits.dictionaries.io.load_dictionary` (JumpReLU ``threshold`` required when named;
  ``n_heads`` from the caller or the model name for attention SAEs on hook_z; which architectures and options map
  exactly and which are refused: docs/interop.md, tested against the real sae-lens).
* circuit-tracer 0.5.0 transcoder folders (``config.yaml``, ``model_kind: transcoder_set``) +
  ``layer_{i}.safetensors`` with ``W_enc [d_tc, d_model]`` (transposed relative to SAELens), ``W_dec [d_tc,
  d_model]``, ``b_enc``, ``b_dec``, optional ``activation_function.threshold`` (JumpReLU, ``pre > θ``) and
  ``W_skip [d_model, d_model]`` (skip transcoder: ``x @ W_skip.T``, the orientation we keep).
* circuit-tracer 0.5.0 cross-layer transcoders (``model_kind: cross_layer_transcoder``): ``W_enc_{l}.safetensors``
  holding ``W_enc_{l} [d_tc, d_model]``, ``b_enc_{l} [d_tc]``, ``b_dec_{l} [d_model]`` (layer l's output bias) and
  optionally ``threshold_{l} [d_tc]``; ``W_dec_{l}.safetensors`` holding ``W_dec_{l} [d_tc, n_layers − l,
  d_model]``. As in its ``load_clt``: n_layers = the number of ``W_enc_*`` files, JumpReLU when ``threshold_0``
  exists, ReLU otherwise. Its CLT files never hold a skip connection (its loader never reads one).

Every converted dictionary computes exactly the original's codes and outputs (same operations in the same order).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from circuits.dictionaries.base import Dictionary, DictionaryConfig
from circuits.dictionaries.io import (
    DictionaryLoadError,
    dictionary_from_tensors,
    n_heads_for,
    read_json,
    read_safetensors,
)
from circuits.model import parse_layer


class _ForeignObject:
    """Stands in for any class a foreign pickle names: keeps the fields, runs no code of theirs."""

    def __init__(self, *args, **kwargs):
        self.__dict__["_args"] = args
        self.__dict__.update(kwargs)

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)

    def fields(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


def restricted_torch_load(path: Path) -> object:
    """``torch.load(weights_only=True)`` where each foreign class in the file becomes a `_ForeignObject`."""
    from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals

    try:
        foreign = get_unsafe_globals_in_checkpoint(str(path))
    except Exception as e:
        raise DictionaryLoadError(f"{path}: truncated or not a torch file ({e})") from None
    stubs = [(type(name.rsplit(".", 1)[-1], (_ForeignObject,), {}), name) for name in foreign]
    try:
        with safe_globals(stubs):
            return torch.load(str(path), weights_only=True, map_location="cpu")
    except Exception as e:
        raise DictionaryLoadError(f"{path}: cannot be read safely ({str(e).splitlines()[0]})") from None


def _config(source: Path, *args, **kwargs) -> DictionaryConfig:
    try:
        return DictionaryConfig(*args, **kwargs)
    except ValueError as e:
        raise DictionaryLoadError(f"{source}: {e}") from None


def _as_float(tensors: dict, source: Path) -> dict[str, Tensor]:
    out = {}
    for k, v in tensors.items():
        if not isinstance(v, Tensor):
            raise DictionaryLoadError(f"{source}: entry {k!r} is not a tensor")
        out[k] = v.float()
    return out


def load_dunefsky_transcoder(path: Path) -> Dictionary:
    """One Dunefsky et al. GPT-2 transcoder ``.pt`` file."""
    path = Path(path)
    if not path.exists():
        raise DictionaryLoadError(f"missing transcoder file {path}")
    obj = restricted_torch_load(path)
    if not isinstance(obj, dict) or "state_dict" not in obj or "cfg" not in obj:
        raise DictionaryLoadError(f"{path}: not a Dunefsky transcoder file (expected keys 'cfg' and 'state_dict')")
    cfg_obj = obj["cfg"]
    fields = cfg_obj.fields() if isinstance(cfg_obj, _ForeignObject) else dict(cfg_obj)
    sd = _as_float(obj["state_dict"], path)
    for key in ("W_enc", "b_enc", "W_dec", "b_dec", "b_dec_out"):
        if key not in sd:
            raise DictionaryLoadError(f"{path}: no tensor {key!r} (found {sorted(sd)})")
    hook = fields.get("hook_point") or ""
    if not hook.endswith("ln2.hook_normalized"):
        raise DictionaryLoadError(f"{path}: reads {hook!r}; a transcoder must read blocks.L.ln2.hook_normalized")
    d_in, d_sae = sd["W_enc"].shape
    cfg = _config(path, "transcoder", parse_layer(hook), int(d_in), int(d_sae), int(sd["W_dec"].shape[1]),
                           activation="relu", k=None, context_size=int(fields.get("context_size") or 128),
                           model_name=str(fields.get("model_name") or "gpt2-small"))
    tensors = {"W_enc": sd["W_enc"], "b_enc": sd["b_enc"], "W_dec": sd["W_dec"], "b_dec": sd["b_dec_out"]}
    return dictionary_from_tensors(cfg, tensors, path, b_in=sd["b_dec"])


def load_kissane_attention_sae(path: Path, n_heads: int | None = None) -> Dictionary:
    """One Kissane et al. attention SAE: ``<stem>.pt`` (state dict) beside ``<stem>_cfg.json``."""
    path = Path(path)
    if not path.exists():
        raise DictionaryLoadError(f"missing attention SAE file {path}")
    cfg_path = path.with_name(path.stem + "_cfg.json")
    raw = read_json(cfg_path)
    act_name = str(raw.get("act_name", ""))
    if not act_name.endswith("attn.hook_z"):
        raise DictionaryLoadError(f"{cfg_path}: act_name {act_name!r} is not blocks.L.attn.hook_z")
    try:
        sd = torch.load(str(path), weights_only=True, map_location="cpu")
    except Exception as e:
        raise DictionaryLoadError(f"{path}: truncated or not a torch state dict ({str(e).splitlines()[0]})") from None
    if not isinstance(sd, dict):
        raise DictionaryLoadError(f"{path}: not a state dict")
    sd = _as_float(sd, path)
    model_name = str(raw.get("model_name", "gpt2-small"))
    d_in = int(raw.get("act_size", sd.get("W_enc", torch.empty(0, 0)).shape[0]))
    d_sae = int(raw.get("dict_size", sd.get("W_enc", torch.empty(0, 0)).shape[-1]))
    cfg = _config(cfg_path, "attention_sae", parse_layer(act_name), d_in, d_sae, d_in, activation="relu", k=None,
                           n_heads=n_heads_for(model_name, n_heads, cfg_path),
                           context_size=int(raw.get("seq_len", 128)), model_name=model_name)
    return dictionary_from_tensors(cfg, sd, path)


def load_circuit_tracer_folder(folder: Path, input_hooks: tuple[str, ...] = ("ln2.hook_normalized",),
                               output_hooks: tuple[str, ...] = ("hook_mlp_out",)) -> list[Dictionary]:
    """A circuit-tracer transcoder set: ``config.yaml`` + ``layer_{i}.safetensors``. `input_hooks` /
    `output_hooks`: the config hooks accepted (`public_sets` widens them and folds ``mlp.hook_in`` itself)."""
    import yaml

    folder = Path(folder)
    cfg_path = folder / "config.yaml"
    if not cfg_path.exists():
        raise DictionaryLoadError(f"missing {cfg_path}: not a circuit-tracer transcoder folder")
    try:
        raw = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as e:
        raise DictionaryLoadError(f"{cfg_path}: not valid YAML ({e})") from None
    kinds = ("transcoder_set", "cross_layer_transcoder")
    if not isinstance(raw, dict) or raw.get("model_kind") not in kinds:
        kind = raw.get("model_kind") if isinstance(raw, dict) else None
        raise DictionaryLoadError(f"{cfg_path}: model_kind {kind!r} is not supported (only {' or '.join(kinds)})")
    if str(raw.get("feature_input_hook")) not in input_hooks:
        raise DictionaryLoadError(f"{cfg_path}: feature_input_hook {raw.get('feature_input_hook')!r}; only "
                                  f"{' or '.join(map(repr, input_hooks))} transcoders can be spliced")
    if str(raw.get("feature_output_hook")) not in output_hooks:
        raise DictionaryLoadError(f"{cfg_path}: feature_output_hook must be {' or '.join(map(repr, output_hooks))}")
    if raw["model_kind"] == "cross_layer_transcoder":
        return [load_circuit_tracer_clt(folder, str(raw.get("model_name", "unknown")))]
    files = sorted(folder.glob("layer_*.safetensors"), key=lambda p: int(re.findall(r"\d+", p.stem)[0]))
    if not files:
        raise DictionaryLoadError(f"{folder}: no layer_<i>.safetensors files")
    out = []
    for f in files:
        layer = int(re.findall(r"\d+", f.stem)[0])
        t = read_safetensors(f)
        if "W_enc" not in t or "W_dec" not in t:
            raise DictionaryLoadError(f"{f}: needs W_enc and W_dec (found {sorted(t)})")
        d_sae, d_model = t["W_enc"].shape
        threshold = t.get("activation_function.threshold")
        cfg = _config(f, "transcoder", layer, int(d_model), int(d_sae), int(t["W_dec"].shape[1]),
                               activation="jumprelu" if threshold is not None else "relu", k=None,
                               model_name=str(raw.get("model_name", "unknown")), skip="W_skip" in t)
        tensors = {"W_enc": t["W_enc"].T.contiguous(), "b_enc": t.get("b_enc"), "W_dec": t["W_dec"],
                   "b_dec": t.get("b_dec")}
        if any(v is None for v in tensors.values()):
            raise DictionaryLoadError(f"{f}: needs b_enc and b_dec")
        if threshold is not None:
            tensors["threshold"] = threshold.reshape(-1)
        if "W_skip" in t:
            tensors["W_skip"] = t["W_skip"]  # [d_model, d_model], applied as x @ W_skip.T: our orientation too
        out.append(dictionary_from_tensors(cfg, tensors, f))
    return out


def load_circuit_tracer_clt(folder: Path, model_name: str = "unknown"):
    """circuit-tracer's CLT files (``W_enc_{l}`` / ``W_dec_{l}``) in `folder`, read as its ``load_clt`` does."""
    from circuits.dictionaries.clt import CLTConfig
    from circuits.dictionaries.io import clt_from_circuit_tracer_files, read_safetensors

    folder = Path(folder)
    enc_files = list(folder.glob("W_enc_*.safetensors"))
    n_layers = len(enc_files)
    if not n_layers:
        raise DictionaryLoadError(f"{folder}: no W_enc_<l>.safetensors files (a circuit-tracer CLT folder)")
    layers = sorted(int(m.group(1)) for p in enc_files if (m := re.fullmatch(r"W_enc_(\d+)", p.stem)))
    if layers != list(range(n_layers)):
        raise DictionaryLoadError(f"{folder}: W_enc files must be numbered 0..{n_layers - 1}; found {layers}")
    first = read_safetensors(folder / "W_enc_0.safetensors")
    if "W_enc_0" not in first:
        raise DictionaryLoadError(f"{folder / 'W_enc_0.safetensors'}: no 'W_enc_0' (found {sorted(first)})")
    d_sae, d_model = first["W_enc_0"].shape
    activation = "jumprelu" if "threshold_0" in first else "relu"
    try:
        cfg = CLTConfig(n_layers, int(d_model), int(d_sae), activation=activation, k=None, model_name=model_name)
    except ValueError as e:
        raise DictionaryLoadError(f"{folder}: {e}") from None
    return clt_from_circuit_tracer_files(folder, cfg)
