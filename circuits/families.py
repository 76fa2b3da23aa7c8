"""Model families beyond GPT-2: Gemma-2, Llama-3 and Qwen3, as TransformerLens configs, names and sizes.

Three things live here:

* **Architectures** (`FAMILIES`): what each family changes relative to a GPT-2 block, as the TransformerLens
  ``HookedTransformerConfig`` fields that express it —

  ====================  ===================================================================================
  RMSNorm               ``normalization_type="RMS"``: ``x / σ · w`` with σ = √(mean x² + ε), no centring, no
                        bias. Frozen, σ is a per-position scale (``ln*.hook_scale``), so the norm is linear.
  post-norms (Gemma-2)  ``use_normalization_before_and_after``: RMSNorms ``ln1_post`` / ``ln2_post`` on what
                        attention and the MLP write, before ``hook_attn_out`` / ``hook_mlp_out``. Frozen, each
                        is a linear scale ``w / σ_post[p]`` on the written vectors.
  rotary                ``positional_embedding_type="rotary"``: no positional embedding (token nodes carry
                        ``W_E`` only); queries and keys are rotated by position (``hook_rot_q``/``hook_rot_k``),
                        which enters the QK side only.
  grouped-query attn    ``n_key_value_heads < n_heads``: query heads h share key/value head
                        ``h // (n_heads / n_key_value_heads)``; TransformerLens' ``W_K``/``W_V`` repeat the shared
                        heads, ``hook_z`` has one slot per query head.
  gated MLP             ``gated_mlp``: ``W_out(act(W_gate x) ⊙ W_in x)``. A transcoder replaces the whole MLP, so
                        only its hooks and shapes matter.
  soft-capping          ``attn_scores_soft_cap`` (Gemma-2: 50): scores ``c·tanh(s/c)`` before the softmax — only
                        the frozen pattern changes. ``output_logits_soft_cap`` (Gemma-2: 30): logits
                        ``c·tanh(l/c)``; logit targets explain the logit *before* the cap (`targets`).
  sliding window        ``use_local_attn``/``attn_types``/``window_size`` (Gemma-2: every other layer local,
                        4096 keys): a mask — only the frozen pattern changes.
  QK-norm (Qwen3)       ``use_qk_norm``: RMSNorm of each head's q and k — QK side only.
  unembedding           tied (Gemma-2, Qwen3-0.6B: ``W_U = W_Eᵀ``) or untied (Llama-3.2-1B); the final norm is
                        an RMSNorm in all three.
  ====================  ===================================================================================

* **Tiny random models** (`tiny_model`): seeded, float64, a few layers, d_model ≤ 64, every feature of the family
  switched on (non-trivial norm weights and biases, small soft-caps and windows so they bite) — the models on which
  the exactness tests run.
* **Public models** (`PUBLIC_MODELS`): names for `circuits.model.load_model`, their Hugging Face ids, parameter
  counts and shapes (for the memory column of docs/model-families.md) and the public dictionary sets that fit
  them (`circuits.dictionaries.public_sets`). `save_model` / `load_saved` write and read a folder with any
  TransformerLens config (``config.json`` + ``model.safetensors`` + ``tokenizer/``), so ``circuits trace --model
  PATH`` runs on a saved tiny model.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from circuits.errors import ModelLoadError

SAVED_FORMAT = "circuits-tl/1"


# -- architectures ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One architecture family: the TransformerLens config fields that make it, at tiny size."""

    key: str  # "gemma2", "llama3", "qwen3"
    title: str
    architecture: str  # Hugging Face architecture name (TransformerLens' original_architecture)
    fields: dict  # HookedTransformerConfig fields that express the family (tiny sizes)
    tied_unembed: bool


_COMMON = dict(normalization_type="RMS", positional_embedding_type="rotary", gated_mlp=True, final_rms=True,
               eps=1e-6, default_prepend_bos=True, tokenizer_prepends_bos=False)

FAMILIES: dict[str, Family] = {
    "gemma2": Family("gemma2", "Gemma-2", "Gemma2ForCausalLM", dict(
        _COMMON, act_fn="gelu_pytorch_tanh", n_key_value_heads=2, use_normalization_before_and_after=True,
        attn_scores_soft_cap=2.0, output_logits_soft_cap=4.0, use_local_attn=True, attn_types=["local", "global"],
        window_size=3, rotary_base=10000.0), tied_unembed=True),
    "llama3": Family("llama3", "Llama-3", "LlamaForCausalLM", dict(
        _COMMON, act_fn="silu", n_key_value_heads=2, rotary_base=500000.0, use_NTK_by_parts_rope=True,
        NTK_by_parts_factor=32.0, NTK_by_parts_low_freq_factor=1.0, NTK_by_parts_high_freq_factor=4.0,
        NTK_original_ctx_len=16), tied_unembed=False),
    "qwen3": Family("qwen3", "Qwen3", "Qwen3ForCausalLM", dict(
        _COMMON, act_fn="silu", n_key_value_heads=2, use_qk_norm=True, rotary_base=1000000.0),
        tied_unembed=True),
}


def tiny_config_dict(family: str, d_vocab: int, n_layers: int = 2, d_model: int = 32, n_heads: int = 4,
                     d_mlp: int = 64, n_ctx: int = 32, dtype: str = "float64") -> dict:
    """The JSON-able HookedTransformerConfig fields of a tiny model of `family` (see `FAMILIES`)."""
    fam = _family(family)
    if d_model > 64:
        raise ValueError("tiny models have d_model ≤ 64")
    d_head = d_model // n_heads
    fields = dict(fam.fields)
    if "attn_types" in fields:
        fields["attn_types"] = [fields["attn_types"][layer % 2] for layer in range(n_layers)]
    return dict(fields, n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head, d_mlp=d_mlp,
                n_ctx=n_ctx, d_vocab=d_vocab, rotary_dim=d_head, original_architecture=fam.architecture,
                model_name=f"tiny-{fam.key}", dtype=dtype)


def hooked_config(fields: dict):
    """A HookedTransformerConfig from `tiny_config_dict`-style fields (dtype given by name)."""
    import torch
    from transformer_lens import HookedTransformerConfig

    fields = dict(fields)
    fields["dtype"] = getattr(torch, fields.get("dtype", "float32"))
    return HookedTransformerConfig(**fields)


def tiny_model(family: str, seed: int = 0, tokenizer_folder: Path | None = None, **sizes):
    """A seeded tiny random model of `family` (float64 unless ``dtype=`` says otherwise), with the organism's
    tokenizer (saved into `tokenizer_folder` when given, else a temporary folder).

    Every weight is random; norm weights are ``1 + 0.3·N(0, 1)`` and the biases (which these families do not have,
    all zero in TransformerLens) ``0.1·N(0, 1)``, so that centring-free norms, post-norm scales and every constant
    term are exercised. The unembedding is tied (``W_U = W_Eᵀ``) where the family ties it."""
    import tempfile

    import torch
    from transformer_lens import HookedTransformer

    from circuits.organism.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer

    folder = save_tokenizer(Path(tokenizer_folder) if tokenizer_folder is not None
                            else Path(tempfile.mkdtemp(prefix="circuits-tok-")) / "tokenizer")
    fields = tiny_config_dict(family, build_tokenizer().get_vocab_size(), **sizes)
    torch.manual_seed(seed)
    model = HookedTransformer(hooked_config(fields), tokenizer=load_tokenizer(folder), move_to_device=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "w" and p.ndim == 1:  # every norm weight (ln1, ln2, ln*_post, ln_final, q/k norms)
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif leaf.startswith(("b_", "_b_")):
                p.copy_(0.1 * torch.randn_like(p))
        if _family(family).tied_unembed:
            model.unembed.W_U.copy_(model.embed.W_E.T)
    model.eval()
    model.circuits_fields = fields  # what save_model writes
    model.circuits_family = family
    return model


def _family(key: str) -> Family:
    if key not in FAMILIES:
        raise ModelLoadError(f"unknown model family {key!r}; use one of {', '.join(FAMILIES)}")
    return FAMILIES[key]


# -- saved folders ----------------------------------------------------------------------------------------------


def save_model(model, folder: Path, tokenizer_folder: Path | None = None) -> Path:
    """Write `model` (made by `tiny_model`, or any model with ``circuits_fields``) to `folder`: ``config.json``
    (format, family, the config fields), ``model.safetensors`` and ``tokenizer/`` (copied from `tokenizer_folder`,
    else saved from the model's tokenizer)."""
    from safetensors.torch import save_file

    fields = getattr(model, "circuits_fields", None)
    if fields is None:
        raise ModelLoadError("save_model needs a model built by circuits.families.tiny_model (its config fields)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # tied weights are separate tensors in TransformerLens; contiguous copies keep safetensors happy
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"))
    meta = {"format": SAVED_FORMAT, "family": getattr(model, "circuits_family", None), "config": fields}
    (folder / "config.json").write_text(json.dumps(meta, indent=2))
    tok = folder / "tokenizer"
    if tokenizer_folder is not None and Path(tokenizer_folder).resolve() != tok.resolve():
        shutil.copytree(tokenizer_folder, tok, dirs_exist_ok=True)
    elif not tok.exists():
        model.tokenizer.save_pretrained(str(tok))
    return folder


def is_saved_model(folder: Path) -> bool:
    """Whether `folder` was written by `save_model`."""
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("format") == SAVED_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_saved(folder: Path, device: str = "cpu"):
    """Load a `save_model` folder, validating each file; returns `circuits.model.LoadedModel`."""
    from transformer_lens import HookedTransformer

    from circuits.model import LoadedModel, read_weights_and_tokenizer

    folder = Path(folder)
    fix = "write the folder again with circuits.families.save_model"
    cfg_path, weights, tok_path = folder / "config.json", folder / "model.safetensors", folder / "tokenizer"
    for path in (cfg_path, weights, tok_path):
        if not path.exists():
            raise ModelLoadError(f"missing model file {path}; {fix}")
    try:
        meta = json.loads(cfg_path.read_text())
        cfg = hooked_config(meta["config"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelLoadError(f"corrupt model config {cfg_path} ({e}); {fix}") from None
    state, tokenizer = read_weights_and_tokenizer(weights, tok_path, fix, device)
    if len(tokenizer) != cfg.d_vocab:
        raise ModelLoadError(f"tokenizer {tok_path} has {len(tokenizer)} tokens but the config says d_vocab "
                             f"{cfg.d_vocab}; {fix}")
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"weight file {weights} does not match its config ({str(e).splitlines()[0]}); "
                             f"{fix}") from None
    if device != "cpu":
        model.to(device, print_details=False)
    model.eval()
    model.circuits_fields = meta["config"]
    model.circuits_family = meta.get("family")
    return LoadedModel(model, model.tokenizer)


# -- public models ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicModel:
    """A public checkpoint of a family: its name here, its Hugging Face id, size, and the dictionary sets for it."""

    name: str
    family: str
    hf_name: str
    n_params: float  # total parameters (embeddings included), from the model card
    n_layers: int
    d_model: int
    dictionary_sets: tuple[str, ...]  # names in circuits.dictionaries.public_sets.NAMED_SETS

    def weights_gib(self, bytes_per_param: int = 2) -> float:
        """Memory of the weights alone (bf16 by default)."""
        return self.n_params * bytes_per_param / 2**30


PUBLIC_MODELS: dict[str, PublicModel] = {
    "gemma-2-2b": PublicModel("gemma-2-2b", "gemma2", "google/gemma-2-2b", 2.61e9, 26, 2304,
                              ("gemma-2-2b-transcoders", "gemma-2-2b-clt-426k", "gemma-2-2b-clt-2.5m")),
    "llama-3.2-1b": PublicModel("llama-3.2-1b", "llama3", "meta-llama/Llama-3.2-1B", 1.24e9, 16, 2048,
                                ("llama-3.2-1b-transcoders", "llama-3.2-1b-clt-524k")),
    "qwen3-0.6b": PublicModel("qwen3-0.6b", "qwen3", "Qwen/Qwen3-0.6B", 0.60e9, 28, 1024,
                              ("qwen3-0.6b-transcoders",)),
    "qwen3-1.7b": PublicModel("qwen3-1.7b", "qwen3", "Qwen/Qwen3-1.7B", 1.72e9, 28, 2048,
                              ("qwen3-1.7b-transcoders",)),
    "qwen3-4b": PublicModel("qwen3-4b", "qwen3", "Qwen/Qwen3-4B", 4.02e9, 36, 2560, ("qwen3-4b-transcoders",)),
}


def _cached(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except Exception:
        return False


def load_public(name: str, device: str = "cpu"):
    """A public family model through TransformerLens (``from_pretrained_no_processing``: norms, weights and the
    unembedding as published, which the frozen-norm attribution needs). Offline and not cached: fails at once."""
    from circuits.model import LoadedModel, hub_reachable

    spec = PUBLIC_MODELS[name]
    cached = _cached(spec.hf_name)
    if not cached and (os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable()):
        raise ModelLoadError(
            f"{name} ({spec.hf_name}, {spec.weights_gib():.1f} GiB in bf16) is not in the local Hugging Face cache and "
            "the hub is unreachable (offline); use the embedded default instead, the model 'organism' "
            "(load_model('organism'), --model organism, or the explorer's model menu), or a saved tiny model of the "
            "family (circuits.families.save_model)")
    from transformer_lens import HookedTransformer

    try:
        model = HookedTransformer.from_pretrained_no_processing(spec.hf_name, device=device)
    except Exception as e:
        raise ModelLoadError(f"could not load {name} ({spec.hf_name}) through TransformerLens ({e}); gated models "
                             "need `huggingface-cli login`; offline, use load_model('organism')") from None
    model.eval()
    return LoadedModel(model, model.tokenizer)


__all__ = ["FAMILIES", "Family", "PUBLIC_MODELS", "PublicModel", "is_saved_model", "load_public", "load_saved",
           "save_model", "tiny_config_dict", "tiny_model"]
