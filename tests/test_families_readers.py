"""Public dictionaries for Gemma-2, Llama-3.2 and Qwen3 (issue 23 item 3): readers round-trip small synthetic files in
the exact layouts (Gemma Scope ``params.npz``, circuit-tracer ``config.yaml`` sets with a ``transcoders:`` list,
``mlp.hook_in`` sets folded exactly), and named sets fail at once offline naming the default."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from public_format_fixtures import write_circuit_tracer, write_circuit_tracer_clt

from circuits.dictionaries import DictionarySet
from circuits.dictionaries.io import DictionaryLoadError
from circuits.dictionaries.public_sets import (
    ALIASES,
    NAMED_SETS,
    load_config_folder,
    load_named,
    read_gemma_scope,
    resolve,
)
from circuits.families import PUBLIC_MODELS, tiny_model
from circuits.model import hook_ln2_normalized
from circuits.replacement import ReplacementModel

PROMPT = "When Mary and John went to the store, John gave a drink to"


def _gemma_scope_arrays(d_model: int, d_sae: int, seed: int) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    return {"W_enc": g.normal(0, 0.3, (d_model, d_sae)).astype(np.float32),
            "W_dec": g.normal(0, 0.3, (d_sae, d_model)).astype(np.float32),
            "b_enc": g.normal(0, 0.1, d_sae).astype(np.float32),
            "b_dec": g.normal(0, 0.1, d_model).astype(np.float32),
            "threshold": np.abs(g.normal(0, 0.2, d_sae)).astype(np.float32)}


def _reference(arrays: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma Scope's JumpReLU transcoder computed from the arrays: (codes, output)."""
    t = {k: torch.from_numpy(v).double() for k, v in arrays.items()}
    pre = x @ t["W_enc"] + t["b_enc"]
    codes = pre * (pre > t["threshold"])
    return codes, codes @ t["W_dec"] + t["b_dec"]


@pytest.mark.parametrize("suffix", ["npz", "safetensors"])
def test_gemma_scope_file_round_trips(tmp_path, suffix):
    arrays = _gemma_scope_arrays(16, 40, seed=0)
    path = tmp_path / f"params.{suffix}"
    if suffix == "npz":
        np.savez(path, **arrays)
    else:
        from safetensors.numpy import save_file

        save_file(arrays, str(path))
    d = read_gemma_scope(path, layer=3)
    assert d.cfg.activation == "jumprelu" and d.cfg.layer == 3 and d.cfg.d_sae == 40 and d.cfg.d_in == 16
    x = torch.randn(5, 16, dtype=torch.float64)
    codes, out = _reference(arrays, x)
    got = d.double().encode(x)
    assert torch.allclose(got, codes, atol=1e-6) and (codes > 0).any() and (codes == 0).any()
    assert torch.allclose(d.reconstruct(got, x), out, atol=1e-6)


def test_gemma_scope_bad_files_are_one_clear_error(tmp_path):
    arrays = _gemma_scope_arrays(8, 12, seed=1)
    np.savez(tmp_path / "no_threshold.npz", **{k: v for k, v in arrays.items() if k != "threshold"})
    with pytest.raises(DictionaryLoadError, match="threshold"):
        read_gemma_scope(tmp_path / "no_threshold.npz", 0)
    np.savez(tmp_path / "pickled.npz", W_enc=np.array([object()], dtype=object))
    with pytest.raises(DictionaryLoadError, match="not a readable .npz"):
        read_gemma_scope(tmp_path / "pickled.npz", 0)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DictionaryLoadError, match="not a readable .npz"):
        read_gemma_scope(tmp_path / "junk.npz", 0)


def test_a_gemma_scope_config_with_a_transcoders_list_splices_into_a_tiny_gemma2(tmp_path):
    """circuit-tracer's Gemma set: config.yaml (ln2.hook_normalized → hook_mlp_out) listing one params.npz per layer
    (local relative paths here, hf:// online); spliced exactly, and each transcoder's codes are Gemma Scope's."""
    model = tiny_model("gemma2", seed=0, tokenizer_folder=tmp_path / "tok")
    d_model = model.cfg.d_model
    arrays = []
    for layer in range(model.cfg.n_layers):
        arrays.append(_gemma_scope_arrays(d_model, 48, seed=10 + layer))
        (tmp_path / "set" / f"layer_{layer}").mkdir(parents=True)
        np.savez(tmp_path / "set" / f"layer_{layer}" / "params.npz", **arrays[-1])
    (tmp_path / "set" / "config.yaml").write_text(
        'model_name: "google/gemma-2-2b"\nmodel_kind: "transcoder_set"\nfeature_input_hook: "ln2.hook_normalized"\n'
        "feature_output_hook: 'hook_mlp_out'\ntranscoders:\n"
        + "".join(f'  - "layer_{i}/params.npz"\n' for i in range(model.cfg.n_layers)))
    dicts = [d.double() for d in load_config_folder(tmp_path / "set", model)]
    rm = ReplacementModel(model, DictionarySet("gemma-2-2b", {d.cfg.name: d for d in dicts}))
    cache = rm.run(PROMPT)
    with torch.no_grad():
        assert (cache.logits - model(cache.tokens[None])[0]).abs().max() <= 1e-12
    for layer, a in enumerate(arrays):
        x = cache.hook_values[hook_ln2_normalized(layer)]
        codes, _ = _reference(a, x)
        assert torch.allclose(cache.codes[f"transcoder_L{layer}"], codes, atol=1e-6)


@pytest.mark.parametrize("family", ["llama3", "qwen3"])
def test_mlp_hook_in_sets_are_folded_exactly(tmp_path, family):
    """Newer circuit-tracer sets read ``mlp.hook_in`` (ln2's output x̂ ⊙ w): folded into the encoder and the skip
    term, our transcoder on ln2.hook_normalized computes circuit-tracer's pre-activations and skip output."""
    model = tiny_model(family, seed=0, tokenizer_folder=tmp_path / "tok")
    n, d_model = model.cfg.n_layers, model.cfg.d_model
    folder = write_circuit_tracer(tmp_path / "set", n, d_model, 40, jumprelu=True, skip=True)
    config = (folder / "config.yaml").read_text()
    (folder / "config.yaml").write_text(config.replace("ln2.hook_normalized", "mlp.hook_in")
                                        .replace("hook_mlp_out", "mlp.hook_out"))
    with pytest.raises(DictionaryLoadError, match="give the model"):
        load_config_folder(folder)
    from safetensors.torch import load_file

    dicts = {d.cfg.layer: d.double() for d in load_config_folder(folder, model)}
    _, store = model.run_with_cache(model.to_tokens(PROMPT))
    for layer in range(n):
        x_hat = store[hook_ln2_normalized(layer)][0]
        mlp_in = x_hat * model.blocks[layer].ln2.w  # circuit-tracer's mlp.hook_in
        t = {k: v.double() for k, v in load_file(str(folder / f"layer_{layer}.safetensors")).items()}
        pre_ref = mlp_in @ t["W_enc"].T + t["b_enc"]
        d = dicts[layer]
        assert torch.allclose(d.pre_activation(x_hat), pre_ref, atol=1e-5)
        assert torch.allclose(d.skip_write(x_hat), mlp_in @ t["W_skip"].T, atol=1e-5)


def test_a_clt_reading_mlp_hook_in_is_folded_layer_by_layer(tmp_path):
    model = tiny_model("llama3", seed=1, tokenizer_folder=tmp_path / "tok")
    n, d_model = model.cfg.n_layers, model.cfg.d_model
    folder = write_circuit_tracer_clt(tmp_path / "clt", n, d_model, 24)
    (folder / "config.yaml").write_text((folder / "config.yaml").read_text().replace("ln2.hook_normalized",
                                                                                     "mlp.hook_in"))
    (clt,) = load_config_folder(folder, model)
    from safetensors.torch import load_file

    _, store = model.run_with_cache(model.to_tokens(PROMPT))
    for layer in range(n):
        x_hat = store[hook_ln2_normalized(layer)][0]
        enc = {k: v.double() for k, v in load_file(str(folder / f"W_enc_{layer}.safetensors")).items()}
        pre_ref = (x_hat * model.blocks[layer].ln2.w) @ enc[f"W_enc_{layer}"].T + enc[f"b_enc_{layer}"]
        got = clt.layers[layer].double().pre_activation(x_hat)
        assert torch.allclose(got, pre_ref, atol=1e-5)


def test_a_gemma2_model_refuses_a_set_predicting_the_mlp_output_before_its_post_norm(tmp_path):
    model = tiny_model("gemma2", seed=0, tokenizer_folder=tmp_path / "tok")
    folder = write_circuit_tracer(tmp_path / "set", model.cfg.n_layers, model.cfg.d_model, 16)
    (folder / "config.yaml").write_text((folder / "config.yaml").read_text().replace("hook_mlp_out", "mlp.hook_out"))
    with pytest.raises(DictionaryLoadError, match="ln2_post"):
        load_config_folder(folder, model)


def test_every_public_model_names_sets_that_exist_and_aliases_resolve():
    for spec in PUBLIC_MODELS.values():
        for name in spec.dictionary_sets:
            assert NAMED_SETS[name].model == spec.name
    assert resolve("gemma")[1].repo == "mwhanna/gemma-scope-transcoders"
    assert resolve("llama")[1].repo == "mntss/transcoder-Llama-3.2-1B"
    assert set(ALIASES.values()) <= set(NAMED_SETS)
    with pytest.raises(DictionaryLoadError, match="unknown public set"):
        resolve("gemma-7b-transcoders")


@pytest.mark.parametrize("name", sorted(NAMED_SETS) + ["gemma"])
def test_named_sets_fail_at_once_offline_naming_the_default(no_network, name):
    from circuits.dictionaries import load_dictionaries

    for load in (load_named, load_dictionaries):
        t0 = time.perf_counter()
        with pytest.raises(DictionaryLoadError, match=r"offline.*organism"):
            load(name)
        assert time.perf_counter() - t0 < 1.0


def test_a_named_set_resolves_through_the_hub_functions(tmp_path, monkeypatch):
    """The online path with the hub replaced by local files: the set's repository is fetched with snapshot_download
    (config.yaml and *.safetensors), each hf:// entry of its ``transcoders:`` list with hf_hub_download (revision
    passed through), and the result is a DictionarySet for the set's model that splices exactly."""
    import huggingface_hub

    import circuits.model

    model = tiny_model("gemma2", seed=0, tokenizer_folder=tmp_path / "tok")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "config.yaml").write_text(
        'model_name: "google/gemma-2-2b"\nmodel_kind: "transcoder_set"\nfeature_input_hook: "ln2.hook_normalized"\n'
        'feature_output_hook: "hook_mlp_out"\ntranscoders:\n'
        + "".join(f'  - "hf://google/gemma-scope-2b-pt-transcoders/layer_{i}/width_16k/average_l0_{70 + i}/params.npz'
                  f'?revision=r{i}"\n' for i in range(model.cfg.n_layers)))
    files = {}
    for i in range(model.cfg.n_layers):
        path = tmp_path / "google" / f"layer_{i}.npz"
        path.parent.mkdir(exist_ok=True)
        np.savez(path, **_gemma_scope_arrays(model.cfg.d_model, 24, seed=i))
        files[(f"layer_{i}/width_16k/average_l0_{70 + i}/params.npz", f"r{i}")] = path
    calls = []

    def snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append(("snapshot", repo_id, tuple(allow_patterns)))
        return str(repo)

    def hf_hub_download(repo_id, filename, revision=None, **kwargs):
        calls.append(("file", repo_id, filename, revision))
        return str(files[(filename, revision)])

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(circuits.model, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    dset, same = load_named("gemma", model)
    assert same is model and dset.model_name == "gemma-2-2b" and len(dset) == model.cfg.n_layers
    # the config first (hooks checked before any weights); the transcoders: list needs no repository weights
    assert calls[0] == ("snapshot", "mwhanna/gemma-scope-transcoders", ("config.yaml",))
    assert calls[1] == ("file", "google/gemma-scope-2b-pt-transcoders",
                        "layer_0/width_16k/average_l0_70/params.npz", "r0")
    for d in dset:
        d.double()
    rm = ReplacementModel(model, dset)
    cache = rm.run(PROMPT)
    with torch.no_grad():
        assert (cache.logits - model(cache.tokens[None])[0]).abs().max() <= 1e-12


def test_a_named_set_with_an_unsupported_hook_is_refused_before_its_weights_download(tmp_path, monkeypatch):
    """The config is fetched first and a hook we cannot splice is refused, naming it, with no weight file requested."""
    import huggingface_hub

    import circuits.model

    (tmp_path / "config.yaml").write_text("model_kind: cross_layer_transcoder\nmodel_name: google/gemma-2-2b\n"
                                          "feature_input_hook: hook_resid_pre\nfeature_output_hook: hook_mlp_out\n")
    calls = []

    def snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append(tuple(allow_patterns))
        return str(tmp_path)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(circuits.model, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    with pytest.raises(DictionaryLoadError, match="feature_input_hook 'hook_resid_pre' cannot be spliced"):
        load_named("gemma-2-2b-clt-426k", model=object())
    assert calls == [("config.yaml",)]


def test_a_clt_on_hook_resid_mid_reads_the_raw_residual_and_splices_exactly(tmp_path):
    """circuit-tracer's CLT default input (``hook_resid_mid``): each layer's encoder reads the raw stream before ln2;
    codes equal circuit-tracer's computed from the arrays, and the splice is exact."""
    from safetensors.torch import load_file

    from circuits.dictionaries.public_sets import ResidualCLTLayer
    from circuits.model import hook_resid_mid

    model = tiny_model("gemma2", seed=0, tokenizer_folder=tmp_path / "tok")
    n, d_model = model.cfg.n_layers, model.cfg.d_model
    folder = write_circuit_tracer_clt(tmp_path / "clt", n, d_model, 24)
    (folder / "config.yaml").write_text((folder / "config.yaml").read_text().replace("ln2.hook_normalized",
                                                                                     "hook_resid_mid"))
    (clt,) = load_config_folder(folder, model)
    clt.double()
    assert all(isinstance(layer, ResidualCLTLayer) and layer.hook_in == hook_resid_mid(i)
               for i, layer in enumerate(clt.layers))
    rm = ReplacementModel(model, DictionarySet("gemma-2-2b", {"clt": clt}))
    cache = rm.run(PROMPT)
    with torch.no_grad():
        assert (cache.logits - model(cache.tokens[None])[0]).abs().max() <= 1e-12
    for layer in range(n):
        enc = {k: v.double() for k, v in load_file(str(folder / f"W_enc_{layer}.safetensors")).items()}
        pre = cache.resid_mid[layer] @ enc[f"W_enc_{layer}"].T + enc[f"b_enc_{layer}"]
        codes = pre * (pre > enc[f"threshold_{layer}"])
        assert torch.allclose(cache.codes[f"transcoder_L{layer}"], codes, atol=1e-9) and (codes > 0).any()
