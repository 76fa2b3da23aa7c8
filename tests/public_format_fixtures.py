"""Builders of small synthetic files in the exact layouts of public dictionary releases (../shared/FORMATS.md)."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path

import torch


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed + sum(shape))
    return torch.randn(*shape, generator=g) * 0.2


def write_dunefsky(folder: Path, layer: int, d_model: int, d_sae: int) -> Path:
    """A ``final_sparse_autoencoder_gpt2-small_blocks.L.ln2.hook_normalized_<d_sae>.pt`` whose cfg is an object of
    a class from a package (``sae_training.config``) that is not installed when the file is read."""
    pkg, mod = types.ModuleType("sae_training"), types.ModuleType("sae_training.config")

    @dataclasses.dataclass
    class LanguageModelSAERunnerConfig:
        hook_point: str
        hook_point_layer: int
        out_hook_point: str
        d_in: int
        d_out: int
        d_sae: int
        expansion_factor: int
        is_transcoder: bool
        context_size: int
        model_name: str
        dtype: torch.dtype = torch.float32

    LanguageModelSAERunnerConfig.__module__ = "sae_training.config"
    LanguageModelSAERunnerConfig.__qualname__ = "LanguageModelSAERunnerConfig"
    mod.LanguageModelSAERunnerConfig = LanguageModelSAERunnerConfig
    sys.modules["sae_training"], sys.modules["sae_training.config"] = pkg, mod
    try:
        cfg = LanguageModelSAERunnerConfig(
            hook_point=f"blocks.{layer}.ln2.hook_normalized", hook_point_layer=layer,
            out_hook_point=f"blocks.{layer}.hook_mlp_out", d_in=d_model, d_out=d_model, d_sae=d_sae,
            expansion_factor=d_sae // d_model, is_transcoder=True, context_size=128, model_name="gpt2-small")
        sd = {"W_enc": _rand(d_model, d_sae), "b_enc": _rand(d_sae), "W_dec": _rand(d_sae, d_model),
              "b_dec": _rand(d_model, seed=1), "b_dec_out": _rand(d_model, seed=2)}
        path = folder / f"final_sparse_autoencoder_gpt2-small_blocks.{layer}.ln2.hook_normalized_{d_sae}.pt"
        torch.save({"cfg": cfg, "state_dict": sd}, path)
    finally:
        del sys.modules["sae_training"], sys.modules["sae_training.config"]
    return path


def write_kissane(folder: Path, layer: int, n_heads: int, d_head: int, d_sae: int) -> Path:
    d = n_heads * d_head
    stem = f"gpt2-small_L{layer}_Hcat_z_lr1.20e-03_l12.00e+00_ds{d_sae}_bs4096_dc1.00e-05_rsanthropic_rie25000_nr4_v5"
    sd = {"W_enc": _rand(d, d_sae), "W_dec": _rand(d_sae, d), "b_enc": _rand(d_sae), "b_dec": _rand(d, seed=3)}
    torch.save(sd, folder / f"{stem}.pt")
    cfg = {"act_name": f"blocks.{layer}.attn.hook_z", "act_size": d, "dict_size": d_sae, "layer": layer,
           "site": "z", "head": "cat", "concat_heads": True, "seq_len": 128, "model_name": "gpt2-small",
           "lr": 0.0012, "l1_coeff": 2.0, "batch_size": 4096, "num_tokens": 2000000000, "dict_mult": d_sae // d}
    (folder / f"{stem}_cfg.json").write_text(json.dumps(cfg))
    return folder / f"{stem}.pt"


def write_saelens_jumprelu_transcoder(folder: Path, layer: int, d_model: int, d_sae: int) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({"W_enc": _rand(d_model, d_sae), "b_enc": _rand(d_sae), "W_dec": _rand(d_sae, d_model),
               "b_dec": _rand(d_model), "threshold": _rand(d_sae).abs()}, str(folder / "sae_weights.safetensors"))
    cfg = {"architecture": "jumprelu_transcoder", "d_in": d_model, "d_sae": d_sae, "d_out": d_model,
           "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": False, "normalize_activations": "none",
           "reshape_activations": "none",
           "metadata": {"model_name": "gemma-2-2b", "hook_name": f"blocks.{layer}.ln2.hook_normalized",
                        "hook_name_out": f"blocks.{layer}.hook_mlp_out", "hook_head_index": None,
                        "prepend_bos": True, "context_size": 1024, "dataset_path": None,
                        "neuronpedia_id": None, "sae_lens_version": "6.0.0"}}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def write_circuit_tracer(folder: Path, n_layers: int, d_model: int, d_sae: int, jumprelu: bool = True,
                         skip: bool = False) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(
        "model_kind: transcoder_set\nmodel_name: gpt2\nfeature_input_hook: ln2.hook_normalized\n"
        "feature_output_hook: hook_mlp_out\n" + ("activation: jump_relu\n" if jumprelu else "activation: relu\n"))
    for i in range(n_layers):
        t = {"W_enc": _rand(d_sae, d_model, seed=i), "W_dec": _rand(d_sae, d_model, seed=i + 7),
             "b_enc": _rand(d_sae, seed=i), "b_dec": _rand(d_model, seed=i)}
        if jumprelu:
            t["activation_function.threshold"] = _rand(d_sae, seed=i).abs()
        if skip:
            t["W_skip"] = _rand(d_model, d_model, seed=i + 3)  # circuit-tracer: skip = x @ W_skip.T
        save_file(t, str(folder / f"layer_{i}.safetensors"))
    return folder


def write_circuit_tracer_clt(folder: Path, n_layers: int, d_model: int, d_sae: int, jumprelu: bool = True) -> Path:
    """circuit-tracer 0.5.0's CLT layout (its CrossLayerTranscoder.to_safetensors): per layer i,
    W_enc_{i}.safetensors = {W_enc_{i} [d_sae, d_model], b_enc_{i} [d_sae], b_dec_{i} [d_model], threshold_{i}
    [d_sae] (JumpReLU only)} and W_dec_{i}.safetensors = {W_dec_{i} [d_sae, n_layers - i, d_model]}."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(
        "model_kind: cross_layer_transcoder\nmodel_name: gpt2\nfeature_input_hook: ln2.hook_normalized\n"
        "feature_output_hook: hook_mlp_out\n")
    for i in range(n_layers):
        enc = {f"W_enc_{i}": _rand(d_sae, d_model, seed=i), f"b_enc_{i}": _rand(d_sae, seed=i + 1),
               f"b_dec_{i}": _rand(d_model, seed=i + 2)}
        if jumprelu:
            enc[f"threshold_{i}"] = _rand(d_sae, seed=i + 4).abs() * 0.5
        save_file(enc, str(folder / f"W_enc_{i}.safetensors"))
        save_file({f"W_dec_{i}": _rand(d_sae, n_layers - i, d_model, seed=i + 5)},
                  str(folder / f"W_dec_{i}.safetensors"))
    return folder
