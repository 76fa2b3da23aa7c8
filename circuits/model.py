"""Loading models and tokenizers; the one place where TransformerLens hook names are built.

`load_model("organism")` reads the embedded default from ``data/organism/`` (safetensors weights, a JSON config
and a tokenizer folder) with no network access. `load_model("gpt2")` and the families' public models
(``"gemma-2-2b"``, ``"llama-3.2-1b"``, ``"qwen3-0.6b"``, ...; `circuits.families.PUBLIC_MODELS`) load through
TransformerLens when the Hugging Face hub is reachable (or the weights are already in the local cache), and
otherwise fail within seconds with one message naming the offline default. A folder path loads an organism folder
or a folder written by `circuits.families.save_model` (any TransformerLens config: the tiny family models).

Hook names: every module that touches a hook calls a function below and never spells a hook string itself;
`check_hooks` fails loudly when a name is missing from a model's ``hook_dict``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import NamedTuple

from circuits.errors import ModelLoadError

#: Folder of shipped artifacts: $CIRCUITS_DATA, else ``data/`` beside the package (an editable install or a clone).
DATA_DIR = Path(os.environ.get("CIRCUITS_DATA", Path(__file__).resolve().parent.parent / "data"))

KNOWN_MODELS: tuple[str, ...] = ("organism", "gpt2", "gemma-2-2b", "llama-3.2-1b", "qwen3-0.6b")


# -- hook names ---------------------------------------------------------------------------------------------------


def hook_embed() -> str:
    return "hook_embed"


def hook_pos_embed() -> str:
    return "hook_pos_embed"


def hook_resid_pre(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def hook_resid_mid(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_mid"


def hook_resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def hook_attn_z(layer: int) -> str:
    """Per-head attention values mixed by the pattern: [batch, pos, n_heads, d_head]."""
    return f"blocks.{layer}.attn.hook_z"


def hook_attn_pattern(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def hook_attn_q(layer: int) -> str:
    """Per-head queries: [batch, pos, n_heads, d_head]."""
    return f"blocks.{layer}.attn.hook_q"


def hook_attn_k(layer: int) -> str:
    """Per-head keys: [batch, pos, n_heads, d_head]."""
    return f"blocks.{layer}.attn.hook_k"


def hook_attn_v(layer: int) -> str:
    """Per-head values: [batch, pos, n_heads, d_head]."""
    return f"blocks.{layer}.attn.hook_v"


def hook_q_input(layer: int) -> str:
    """Per-head query input (the residual stream before ln1): [batch, pos, n_heads, d_model]; exists only while
    ``model.cfg.use_split_qkv_input`` is True (``model.set_use_split_qkv_input(True)``)."""
    return f"blocks.{layer}.hook_q_input"


def hook_k_input(layer: int) -> str:
    """Per-head key input; see `hook_q_input`."""
    return f"blocks.{layer}.hook_k_input"


def hook_v_input(layer: int) -> str:
    """Per-head value input; see `hook_q_input`."""
    return f"blocks.{layer}.hook_v_input"


def hook_attn_out(layer: int) -> str:
    return f"blocks.{layer}.hook_attn_out"


def hook_ln1_scale(layer: int) -> str:
    return f"blocks.{layer}.ln1.hook_scale"


def hook_ln2_scale(layer: int) -> str:
    return f"blocks.{layer}.ln2.hook_scale"


def hook_ln2_normalized(layer: int) -> str:
    """Transcoder input: the MLP's LayerNorm, ``P x / σ`` before its γ and β (TransformerLens' hook_normalized)."""
    return f"blocks.{layer}.ln2.hook_normalized"


def hook_mlp_out(layer: int) -> str:
    """Transcoder target: the MLP's output."""
    return f"blocks.{layer}.hook_mlp_out"


def hook_ln1_post_scale(layer: int) -> str:
    """Scale of Gemma-2's norm after attention (``ln1_post``, applied before hook_attn_out): [batch, pos, 1]."""
    return f"blocks.{layer}.ln1_post.hook_scale"


def hook_ln2_post_scale(layer: int) -> str:
    """Scale of Gemma-2's norm after the MLP (``ln2_post``, applied before hook_mlp_out): [batch, pos, 1]."""
    return f"blocks.{layer}.ln2_post.hook_scale"


def hook_attn_scores(layer: int) -> str:
    """Attention scores after scaling, soft-capping and masking, before the softmax: [batch, head, q, k]."""
    return f"blocks.{layer}.attn.hook_attn_scores"


def hook_q_norm_scale(layer: int) -> str:
    """Qwen3's per-head QK-norm of the queries: scale [batch * pos * n_heads, 1] (rows in that order)."""
    return f"blocks.{layer}.attn.q_norm.hook_scale"


def hook_k_norm_scale(layer: int) -> str:
    """Qwen3's per-head QK-norm of the keys: scale [batch * pos * n_key_value_heads, 1]."""
    return f"blocks.{layer}.attn.k_norm.hook_scale"


def hook_ln_final_scale() -> str:
    return "ln_final.hook_scale"


def hook_ln_final_normalized() -> str:
    """``P x / σ`` of the final LayerNorm (before its γ and β)."""
    return "ln_final.hook_normalized"


def parse_layer(hook_name: str) -> int:
    """The layer number of a ``blocks.L...`` hook name; raises ValueError for other names."""
    parts = hook_name.split(".")
    if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
        raise ValueError(f"{hook_name!r} is not a per-layer hook name (blocks.L....)")
    return int(parts[1])


def check_hooks(model, names: list[str]) -> None:
    """Raise if any hook name is not a hook of `model`."""
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        raise ModelLoadError(f"hook(s) {missing} do not exist in this model; check the layer numbers")


# -- loading ------------------------------------------------------------------------------------------------------


class LoadedModel(NamedTuple):
    """What `load_model` returns: the HookedTransformer and its tokenizer."""

    model: object  # transformer_lens.HookedTransformer
    tokenizer: object  # transformers tokenizer


def check_model_name(name: str) -> None:
    """`ModelLoadError` unless `name` is one `load_model` knows or an existing folder (the closest known name
    suggested); reads no file and imports no tensor library, so the CLI asks before anything loads."""
    from circuits import families

    use = f"use one of {', '.join(KNOWN_MODELS)} or a folder written by `circuits organism train`"
    if not str(name).strip():
        raise ModelLoadError(f"empty model name; {use}")
    if name in ("organism", "gpt2") or name in families.PUBLIC_MODELS or Path(name).is_dir():
        return
    import difflib

    close = difflib.get_close_matches(str(name), KNOWN_MODELS, n=1)
    raise ModelLoadError(f"unknown model {name!r}" + (f" (did you mean {close[0]}?)" if close else "") + f"; {use}")


def load_model(name: str = "organism", device: str = "cpu") -> LoadedModel:
    """Load a model by name ("organism", "gpt2", a public family model such as "gemma-2-2b") or from a folder
    (an organism folder, or one written by `circuits.families.save_model`)."""
    from circuits import families

    check_model_name(name)
    if name == "organism":
        return load_organism(DATA_DIR / "organism", device)
    if name == "gpt2":
        return _load_gpt2(device)
    if name in families.PUBLIC_MODELS:
        return families.load_public(name, device)
    if Path(name).is_dir():
        if families.is_saved_model(Path(name)):
            return families.load_saved(Path(name), device)
    return load_organism(Path(name), device)


def read_weights_and_tokenizer(weights_path: Path, tok_path: Path, fix: str, device: str = "cpu"):
    """A saved model's state dict (safetensors only) and its Hugging Face tokenizer folder (local files only); a
    corrupt file is one `ModelLoadError` naming it and ending with `fix`. Shared by the organism loader and
    `circuits.families.load_saved_model`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights_path), device=device)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ModelLoadError(f"corrupt weight file {weights_path} ({e}); {fix}") from None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tok_path), local_files_only=True)
    except Exception as e:  # transformers raises many types for a broken folder
        raise ModelLoadError(f"corrupt tokenizer folder {tok_path} ({e}); {fix}") from None
    return state, tokenizer


def load_organism(folder: Path, device: str = "cpu") -> LoadedModel:
    """Load an organism folder (config.json, model.safetensors, tokenizer/), validating each file."""
    from transformer_lens import HookedTransformer

    from circuits.organism.train import OrganismModelConfig, hooked_config

    folder = Path(folder)
    shipped = folder.resolve() == (DATA_DIR / "organism").resolve()
    fix = ("restore it with `git checkout data/organism` or retrain with `circuits organism train`" if shipped else
           "give an organism folder (config.json, model.safetensors and tokenizer/, as `circuits organism train` "
           "exports them), or use --model organism")
    config_path, weights_path, tok_path = folder / "config.json", folder / "model.safetensors", folder / "tokenizer"
    for path in (config_path, weights_path, tok_path / "tokenizer.json"):
        if not path.exists():
            raise ModelLoadError(f"missing model file {path}; {fix}")
    try:
        meta = json.loads(config_path.read_text())
        model_cfg = OrganismModelConfig(**meta["model"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"corrupt model config {config_path} ({e}); {fix}") from None
    state, tokenizer = read_weights_and_tokenizer(weights_path, tok_path, fix, device)
    if len(tokenizer) != model_cfg.d_vocab:
        raise ModelLoadError(
            f"tokenizer {tok_path} has {len(tokenizer)} tokens but the model in {weights_path} expects "
            f"{model_cfg.d_vocab}; the tokenizer and weights come from different runs: {fix}"
        )
    model = HookedTransformer(hooked_config(model_cfg), tokenizer=tokenizer, move_to_device=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ModelLoadError(f"weight file {weights_path} does not match its config ({first}); {fix}") from None
    if device != "cpu":
        model.to(device, print_details=False)
    model.eval()
    return LoadedModel(model, model.tokenizer)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within `timeout` seconds (DNS included)."""
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    result: list[bool] = []

    def probe():
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def _gpt2_cached() -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache("gpt2", "config.json")
        return isinstance(path, str)
    except Exception:
        return False


def _load_gpt2(device: str) -> LoadedModel:
    from transformer_lens import HookedTransformer

    cached = _gpt2_cached()
    if not cached and (os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable()):
        raise ModelLoadError(
            "gpt2 is not in the local Hugging Face cache and the hub is unreachable (offline); "
            "use the embedded default instead: the model 'organism' (load_model('organism'), --model organism, or the "
            "explorer's model menu)"
        )
    previous = os.environ.get("HF_HUB_OFFLINE")
    if cached and previous is None:
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        model = HookedTransformer.from_pretrained("gpt2", device=device)
    except Exception as e:
        raise ModelLoadError(f"could not load gpt2 through TransformerLens ({e}); "
                             "use the embedded default load_model('organism')") from None
    finally:
        if cached and previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
    return LoadedModel(model, model.tokenizer)
