"""Splicing: with error terms the forward pass is exact; without them it is the dictionaries' reconstruction."""

from __future__ import annotations

import torch

from circuits.dictionaries.base import DictionaryConfig, make_dictionary
from circuits.replacement import ablation_hooks, mean_activations, splice_hooks


def _dicts(model, seed=0):
    torch.manual_seed(seed)
    cfg = model.cfg
    out = []
    for layer in range(cfg.n_layers):
        for kind in ("transcoder", "attention_sae"):
            d_in = cfg.d_model if kind == "transcoder" else cfg.n_heads * cfg.d_head
            c = DictionaryConfig(kind, layer, d_in, 48, d_in if kind == "attention_sae" else cfg.d_model,
                                 activation="topk", k=6, n_heads=cfg.n_heads)
            d = make_dictionary(c)
            with torch.no_grad():
                for p in d.parameters():
                    p.normal_(0, 0.2)
            out.append(d.eval())
    return out


def test_splice_with_errors_reproduces_logits(tiny_model):
    tokens = tiny_model.to_tokens(["When Mary and John went to the store, John gave a drink to",
                                   "The capital of France is Paris. Lyon is a city in"])
    with torch.no_grad():
        clean = tiny_model(tokens)
        store = {}
        spliced = tiny_model.run_with_hooks(tokens, fwd_hooks=splice_hooks(_dicts(tiny_model), "on", store))
        off = tiny_model.run_with_hooks(tokens, fwd_hooks=splice_hooks(_dicts(tiny_model), "off"))
    assert (spliced - clean).abs().max().item() <= 1e-4
    assert (off - clean).abs().max().item() > 1e-3  # random dictionaries alone do change the output
    assert set(store) == {"transcoder_L0", "attn_sae_L0", "transcoder_L1", "attn_sae_L1"}
    codes, err = store["attn_sae_L1"]
    assert codes.shape == (2, tokens.shape[1], 48) and err.shape == (2, tokens.shape[1], 32)
    assert ((codes > 0).sum(-1) <= 6).all()


def test_error_term_is_original_minus_reconstruction(tiny_model):
    tokens = tiny_model.to_tokens("Mary went to the park because she wanted a book.")
    d = _dicts(tiny_model)[0]  # transcoder L0
    store = {}
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(tokens)
        tiny_model.run_with_hooks(tokens, fwd_hooks=splice_hooks([d], "on", store))
    codes, err = store["transcoder_L0"]
    recon = d.decode(d.encode(cache["blocks.0.ln2.hook_normalized"]))
    torch.testing.assert_close(recon + err, cache["blocks.0.hook_mlp_out"], rtol=0, atol=1e-6)


def test_zero_and_mean_ablation(tiny_model):
    tokens = tiny_model.to_tokens(["Mary saw John at the park.", "John saw Mary at the zoo."])
    name = "blocks.0.hook_mlp_out"
    means = mean_activations(tiny_model, [tokens], [name])
    seen = {}

    def spy(act, hook):
        seen["v"] = act.clone()

    with torch.no_grad():
        tiny_model.run_with_hooks(tokens, fwd_hooks=ablation_hooks([name], "mean", means) + [(name, spy)])
        assert torch.allclose(seen["v"], means[name].expand_as(seen["v"]))
        tiny_model.run_with_hooks(tokens, fwd_hooks=ablation_hooks([name], "zero") + [(name, spy)])
        assert (seen["v"] == 0).all()
