"""The GPT-2-small-shaped random benchmark model shared by the scale benchmarks (attribution, qk, transcoder_only).

12 layers, d_model 768, 12 heads, d_mlp 3072, vocabulary 50,257; random seeded weights; random TopK dictionaries
(W_enc ~ N(0, 1/768), W_dec ~ N(0, 1/d_sae)) of the given kinds at every layer. Only shapes matter for timing.
"""

from __future__ import annotations

import torch


def gpt2_shaped(d_sae: int, k: int, kinds: tuple[str, ...] = ("transcoder", "attention_sae")):
    """A `ReplacementModel` over a random GPT-2-shaped model with `kinds` dictionaries at every layer."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from circuits.dictionaries.base import DictionaryConfig, make_dictionary
    from circuits.replacement import ReplacementModel

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024,
                                  d_vocab=50257, act_fn="gelu_new", normalization_type="LN")
    model = HookedTransformer(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    dicts = []
    for layer in range(12):
        for kind in kinds:
            c = DictionaryConfig(kind, layer, 768, d_sae, 768, activation="topk", k=k,
                                 n_heads=12 if kind == "attention_sae" else None, context_size=1024,
                                 model_name="gpt2-shaped-random")
            d = make_dictionary(c)
            with torch.no_grad():
                d.W_enc.normal_(0, 768 ** -0.5)
                d.W_dec.normal_(0, d_sae ** -0.5)
            d.requires_grad_(False)
            dicts.append(d.eval())
    return ReplacementModel(model, dicts)
