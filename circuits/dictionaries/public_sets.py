"""Public dictionary sets for Gemma-2-2B, Llama-3.2-1B and Qwen3: readers and name resolution.

Layouts read here (each checked against its publisher's loader; round-trip tests on synthetic files in
``tests/test_families_readers.py``):

* **Gemma Scope transcoders** (``google/gemma-scope-2b-pt-transcoders``, JumpReLU, as circuit-tracer 0.5.0's
  ``load_gemma_scope_transcoder`` and SAELens read them): one ``params.npz`` per layer with ``W_enc [d_model, d_sae]``
  (already our orientation), ``W_dec [d_sae, d_model]``, ``b_enc [d_sae]``, ``b_dec [d_model]``, ``threshold
  [d_sae]``; codes ``pre · 1[pre > θ]`` with ``pre = x W_enc + b_enc``. The same keys in a ``.safetensors`` file are
  read the same way. ``.npz`` files are read with ``numpy.load(allow_pickle=False)``: arrays only, no code.
* **circuit-tracer sets** (``config.yaml`` with ``model_kind: transcoder_set`` or ``cross_layer_transcoder``): either
  ``layer_{i}.safetensors`` / ``W_enc_{l}`` files in the folder (read by `formats.load_circuit_tracer_folder`) or a
  ``transcoders:`` list of per-layer files — ``hf://repo/path`` entries (downloaded) or local paths (relative to the
  folder) — as circuit-tracer's ``resolve_transcoder_paths`` does; a ``params.npz`` entry is a Gemma Scope file.
* **Hooks.** ``feature_input_hook: ln2.hook_normalized`` (Gemma Scope: the RMS-normalised MLP input before ln2's
  weight) is our transcoders' input. ``mlp.hook_in`` (circuit-tracer's Qwen3 sets: the MLP's input, i.e. ln2's
  output ``x̂ ⊙ w (+ β)``) is folded exactly into the encoder: ``W_enc ← w[:, None] · W_enc``, ``b_enc ←
  b_enc + β W_enc``, and ``W_skip ← W_skip · w``, ``b_dec ← b_dec + β W_skipᵀ`` — which needs the model's ln2
  weights (`fold_mlp_input`). ``hook_resid_mid`` (the raw residual stream before ln2, circuit-tracer's CLT default)
  is read as it is: such transcoders and CLT layers get ``hook_in = blocks.L.hook_resid_mid`` (`read_residual`), and
  the engines read them without the norm's centring and 1/σ (`replacement.reads_residual`). Outputs:
  ``hook_mlp_out``, or ``mlp.hook_out`` where it is the same tensor (no norm after the MLP); Gemma-2's
  ``mlp.hook_out`` lies before ``ln2_post`` and is refused with a message.

Named sets (`NAMED_SETS`) resolve through ``huggingface_hub`` when the hub is reachable (the config first, its hooks
checked before any weights are fetched) and fail at once offline with one message naming the offline default (``load_dictionaries('organism')``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from circuits.dictionaries.base import Dictionary, Transcoder
from circuits.dictionaries.clt import CLTLayer
from circuits.dictionaries.dictset import DictionarySet
from circuits.dictionaries.io import DictionaryLoadError, dictionary_from_tensors, read_safetensors
from circuits.dictionaries.set_names import ALIASES, NAMED_SETS, NamedSet  # noqa: F401  (re-exported)
from circuits.model import hook_resid_mid

GEMMA_SCOPE_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
INPUT_HOOKS = ("ln2.hook_normalized", "mlp.hook_in", "hook_resid_mid")
OUTPUT_HOOKS = ("hook_mlp_out", "mlp.hook_out")


OFFLINE_DEFAULT = "use load_dictionaries('organism') (--dicts organism) or a local folder"


# -- Gemma Scope files --------------------------------------------------------------------------------------------


def read_gemma_scope(path: Path, layer: int, model_name: str = "gemma-2-2b") -> Dictionary:
    """One Gemma Scope transcoder file (``params.npz``, or ``.safetensors`` with the same keys) for MLP `layer`."""
    path = Path(path)
    if not path.is_file():
        raise DictionaryLoadError(f"no such Gemma Scope file {path}")
    if path.suffix == ".npz":
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as npz:
                raw = {k: torch.from_numpy(np.array(npz[k])) for k in npz.files}
        except (OSError, ValueError, KeyError) as e:  # not a zip, a pickled object, a broken member
            raise DictionaryLoadError(f"{path}: not a readable .npz of arrays ({e})") from None
    else:
        raw = read_safetensors(path)
    missing = [k for k in GEMMA_SCOPE_KEYS if k not in raw]
    if missing:
        raise DictionaryLoadError(f"{path}: a Gemma Scope transcoder needs {', '.join(GEMMA_SCOPE_KEYS)}; missing "
                                  f"{missing} (found {sorted(raw)})")
    if raw["W_enc"].ndim != 2 or raw["W_dec"].ndim != 2:
        raise DictionaryLoadError(f"{path}: W_enc and W_dec must be matrices (got shapes "
                                  f"{tuple(raw['W_enc'].shape)}, {tuple(raw['W_dec'].shape)})")
    d_model, d_sae = raw["W_enc"].shape
    from circuits.dictionaries.base import DictionaryConfig

    try:
        cfg = DictionaryConfig("transcoder", layer, int(d_model), int(d_sae), int(raw["W_dec"].shape[1]),
                               activation="jumprelu", k=None, model_name=model_name)
    except ValueError as e:
        raise DictionaryLoadError(f"{path}: {e}") from None
    tensors = {k: raw[k].float() for k in GEMMA_SCOPE_KEYS}
    tensors["threshold"] = tensors["threshold"].reshape(-1)
    return dictionary_from_tensors(cfg, tensors, path)


# -- circuit-tracer config.yaml sets ------------------------------------------------------------------------------


def read_config(folder: Path) -> dict:
    """A circuit-tracer ``config.yaml`` as a dict, with its hooks checked (see the module docstring)."""
    import yaml

    path = Path(folder) / "config.yaml"
    if not path.exists():
        raise DictionaryLoadError(f"missing {path}: not a circuit-tracer set folder")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DictionaryLoadError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict) or raw.get("model_kind") not in ("transcoder_set", "cross_layer_transcoder"):
        raise DictionaryLoadError(f"{path}: model_kind must be transcoder_set or cross_layer_transcoder")
    if str(raw.get("feature_input_hook")) not in INPUT_HOOKS:
        raise DictionaryLoadError(f"{path}: feature_input_hook {raw.get('feature_input_hook')!r} cannot be spliced; "
                                  f"only {' or '.join(INPUT_HOOKS)}")
    if str(raw.get("feature_output_hook")) not in OUTPUT_HOOKS:
        raise DictionaryLoadError(f"{path}: feature_output_hook {raw.get('feature_output_hook')!r} cannot be "
                                  f"spliced; only {' or '.join(OUTPUT_HOOKS)}")
    return raw


def _resolve_entry(entry: str, folder: Path) -> Path:
    """A ``transcoders:`` entry: a local path (absolute or relative to the folder) or an ``hf://`` file."""
    if entry.startswith("hf://"):
        m = re.fullmatch(r"hf://([^/]+/[^/]+)/([^?]+)(?:\?revision=(.+))?", entry)
        if not m:
            raise DictionaryLoadError(f"{folder / 'config.yaml'}: bad hf:// entry {entry!r}")
        _require_hub(entry)
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(m.group(1), m.group(2), revision=m.group(3)))
    path = Path(entry)
    return path if path.is_absolute() else Path(folder) / path


def load_config_folder(folder: Path, model=None, model_name: str | None = None) -> list[Dictionary]:
    """Every dictionary of a circuit-tracer set folder, in our hooks (``mlp.hook_in`` sets folded with `model`)."""
    from circuits.dictionaries import formats

    folder = Path(folder)
    raw = read_config(folder)
    name = model_name or str(raw.get("model_name", "unknown"))
    if raw.get("transcoders"):
        if raw["model_kind"] != "transcoder_set":
            raise DictionaryLoadError(f"{folder / 'config.yaml'}: a 'transcoders:' list of CLT files (Gemma Scope 2) "
                                      "is not read here")
        dicts = []
        for layer, entry in enumerate(raw["transcoders"]):
            path = _resolve_entry(str(entry), folder)
            if path.suffix == ".npz" or path.name.startswith("params"):
                dicts.append(read_gemma_scope(path, layer, name))
            else:
                dicts.append(_circuit_tracer_layer_file(path, layer, name))
    else:
        dicts = formats.load_circuit_tracer_folder(folder, input_hooks=INPUT_HOOKS, output_hooks=OUTPUT_HOOKS)
    if raw.get("feature_output_hook") == "mlp.hook_out" and model is not None \
            and getattr(model.cfg, "use_normalization_before_and_after", False):
        raise DictionaryLoadError(f"{folder / 'config.yaml'}: feature_output_hook 'mlp.hook_out' lies before the "
                                  "model's norm after the MLP (ln2_post); only sets predicting hook_mlp_out can be "
                                  "spliced into this model")
    if raw.get("feature_input_hook") == "hook_resid_mid":
        read_residual(dicts)
    if raw.get("feature_input_hook") == "mlp.hook_in":
        if model is None:
            raise DictionaryLoadError(f"{folder / 'config.yaml'}: feature_input_hook 'mlp.hook_in' reads ln2's output; "
                                      "give the model (load_dictionaries(name, model)) so that ln2's weight is folded "
                                      "into the encoders")
        fold_mlp_input(dicts, model)
    return dicts


def _circuit_tracer_layer_file(path: Path, layer: int, model_name: str) -> Dictionary:
    """One circuit-tracer per-layer file named in a ``transcoders:`` list (same keys as ``layer_{i}.safetensors``)."""
    from circuits.dictionaries.base import DictionaryConfig

    t = read_safetensors(path)
    if "W_enc" not in t or "W_dec" not in t or "b_enc" not in t or "b_dec" not in t:
        raise DictionaryLoadError(f"{path}: needs W_enc, W_dec, b_enc, b_dec (found {sorted(t)})")
    d_sae, d_model = t["W_enc"].shape
    threshold = t.get("activation_function.threshold")
    try:
        cfg = DictionaryConfig("transcoder", layer, int(d_model), int(d_sae), int(t["W_dec"].shape[1]),
                               activation="jumprelu" if threshold is not None else "relu", k=None,
                               model_name=model_name, skip="W_skip" in t)
    except ValueError as e:
        raise DictionaryLoadError(f"{path}: {e}") from None
    tensors = {"W_enc": t["W_enc"].T.contiguous(), "b_enc": t["b_enc"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    if threshold is not None:
        tensors["threshold"] = threshold.reshape(-1)
    if "W_skip" in t:
        tensors["W_skip"] = t["W_skip"]
    return dictionary_from_tensors(cfg, tensors, path)


@torch.no_grad()
def fold_mlp_input(dictionaries: list[Dictionary], model) -> None:
    """Make transcoders that read the MLP input ``x̂ ⊙ w + β`` (ln2's output) read ``x̂`` (ln2.hook_normalized),
    exactly: ``pre = (x̂ w + β − b_in) W_enc + b_enc = x̂ (w[:, None] W_enc) + (β − b_in) W_enc + b_enc``, so
    ``W_enc ← w[:, None] W_enc``, ``b_enc ← b_enc + (β − b_in) W_enc``, ``b_in ← 0``; a skip term ``(x̂ w + β) W_skipᵀ``
    becomes ``x̂ (W_skip w)ᵀ`` plus ``β W_skipᵀ`` in ``b_dec``. In place, on every layer (a CLT's too)."""
    for d in _expand(dictionaries):
        ln2 = model.blocks[d.cfg.layer].ln2
        w = getattr(ln2, "w", None)
        b = getattr(ln2, "b", None)
        dtype = d.W_enc.dtype
        w = torch.ones(d.cfg.d_in, dtype=dtype) if w is None else w.detach().to(dtype)
        b = torch.zeros(d.cfg.d_in, dtype=dtype) if b is None else b.detach().to(dtype)
        # pre = (x̂ w + β − b_in) W_enc + b_enc = x̂ (w W_enc) + (β − b_in) W_enc + b_enc; b_in becomes 0
        d.b_enc.add_((b - d.b_in) @ d.W_enc)
        if hasattr(d, "b_in_param"):
            d.b_in_param.zero_()
        d.W_enc.mul_(w[:, None])
        if d.W_skip is not None:  # skip = (x̂ w + β) W_skipᵀ
            d.b_dec.add_(b @ d.W_skip.T)
            d.W_skip.mul_(w[None, :])


class ResidualTranscoder(Transcoder):
    """A transcoder whose encoder reads the raw residual stream before the MLP's norm (``hook_resid_mid``)."""

    @property
    def hook_in(self) -> str:
        return hook_resid_mid(self.cfg.layer)


class ResidualCLTLayer(CLTLayer):
    """A CLT layer whose encoder reads ``hook_resid_mid`` (circuit-tracer's default CLT input)."""

    @property
    def hook_in(self) -> str:
        return hook_resid_mid(self.cfg.layer)


def read_residual(dictionaries) -> None:
    """Make transcoders (and every layer of a CLT) read ``blocks.L.hook_resid_mid``, in place (their weights are
    unchanged: only where the input is read from). Saving them in our SAELens layout would not record that input,
    so such sets are used as loaded."""
    for d in _expand(dictionaries):
        if isinstance(d, CLTLayer):
            d.__class__ = ResidualCLTLayer
        elif isinstance(d, Transcoder):
            d.__class__ = ResidualTranscoder
        else:
            raise DictionaryLoadError(f"{d!r}: only transcoders can read the residual stream")


def _expand(dictionaries) -> list[Dictionary]:
    """Per-layer dictionaries and the layers of any cross-layer transcoder among them."""
    from circuits.dictionaries.clt import CrossLayerTranscoder

    out = []
    for d in dictionaries:
        out += list(d.layers) if isinstance(d, CrossLayerTranscoder) else [d]
    return out


# -- names --------------------------------------------------------------------------------------------------------


def _require_hub(what: str) -> None:
    """Fail at once when the Hugging Face hub cannot be reached (HF_HUB_OFFLINE=1, or no TCP connection in 3 s)."""
    from circuits.model import hub_reachable

    if os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable():
        raise DictionaryLoadError(f"{what} must be downloaded from the Hugging Face hub, which is unreachable "
                                  f"(offline); {OFFLINE_DEFAULT}")


def resolve(name: str) -> tuple[str, NamedSet]:
    """(canonical name, its NamedSet) for a set name or circuit-tracer alias; DictionaryLoadError if unknown."""
    canonical = ALIASES.get(name, name)
    if canonical not in NAMED_SETS:
        raise DictionaryLoadError(f"unknown public set {name!r}; use one of {', '.join(NAMED_SETS)}")
    return canonical, NAMED_SETS[canonical]


def download(name: str) -> Path:
    """The local folder of a named set: its ``config.yaml`` first (its hooks are checked before any weights are
    fetched), then, for sets stored in the repository itself, the per-layer or CLT files (a ``transcoders:`` list is
    resolved later, entry by entry)."""
    canonical, spec = resolve(name)
    _require_hub(f"dictionary set {canonical!r} ({spec.repo})")
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(spec.repo, allow_patterns=["config.yaml"]))
    if not read_config(folder).get("transcoders"):
        folder = Path(snapshot_download(spec.repo, allow_patterns=["config.yaml", "*.safetensors"]))
    return folder


def is_public(name: str) -> bool:
    return name in NAMED_SETS or name in ALIASES


def load_named(name: str, model=None) -> tuple[DictionarySet, object]:
    """(the named public set as a DictionarySet, the model it was folded for): downloaded when online, failing at
    once offline; `model` None loads the set's model by name (after the set's files, so offline fails on the set)."""
    canonical, spec = resolve(name)
    folder = download(canonical)
    if model is None:
        from circuits.model import load_model

        model = load_model(spec.model).model
    dicts = load_config_folder(folder, model, model_name=spec.model)
    return DictionarySet(spec.model, {str(i): d for i, d in enumerate(dicts)}, folder), model


__all__ = ["ALIASES", "NAMED_SETS", "NamedSet", "ResidualCLTLayer", "ResidualTranscoder", "download", "fold_mlp_input",
           "is_public", "load_config_folder", "load_named", "read_residual",
           "read_config", "read_gemma_scope", "resolve"]
