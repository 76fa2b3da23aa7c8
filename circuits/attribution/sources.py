"""The sources of a graph: everything that writes into the residual stream, as typed nodes with write vectors.

In forward order (``site``: 0 = embeddings, 2L+1 = attention L, 2L+2 = MLP L):

* token nodes — ``W_E[t_p] + W_pos[p]`` (the position embedding is folded into the token node; a rotary model has
  none: its positions enter only the QK side), read from the cached ``hook_resid_pre`` of layer 0 so that any
  embedding (scaled, rotary) is exact;
* attention-SAE features — ``f_i(p) · W_dec[i] W_O_cat``; the attention error — ``(z − ẑ)[p] W_O_cat``;
* transcoder features — ``g_j(p) · W_dec[j]``; the MLP error — ``mlp_out − ô``; an MLP without a transcoder is
  one error node per position carrying its whole output.

What is left — ``b_dec W_O_cat + b_O`` of each attention layer with an SAE and each transcoder's output bias — is
the same at every position and depends on no node: it is part of each target's constant term (`constant_writes`).
With Gemma-2's frozen norm after attention, everything attention writes at position p — features, error and that
constant — is scaled by ``w1_post / σ1_post[p]`` (`ReplacementModel.attn_out_scale`): the constant then depends on
the position. Grouped-query attention changes nothing here (``hook_z`` has one slot per query head).

A cross-layer transcoder feature is one source at its encoder layer l: ``vectors`` holds its write into MLP l
(``a · W_dec_l[i, 0]``) and `later_writes` its writes into every later MLP l' (``a · W_dec_l[i, l' − l]``). A skip
transcoder's skip term is no source: it is a linear channel of the frozen model that the engines apply to the
writes that reach its input.
An attention layer *without* an SAE writes nothing of its own: in the frozen model it is a linear channel that
carries earlier writes to later positions (the reverse and autograd engines handle it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from circuits.dictionaries.clt import CLTLayer
from circuits.graph import Node
from circuits.replacement import ReplacementCache, ReplacementModel, site_name


def attn_site(layer: int) -> int:
    return 2 * layer + 1


def mlp_site(layer: int) -> int:
    return 2 * layer + 2


@dataclass
class Sources:
    """Source nodes of one prompt. S = number of sources."""

    nodes: list[Node]
    vectors: Tensor  # [S, d_model] write into the residual stream
    pos: Tensor  # [S] long
    site: Tensor  # [S] long, forward order of the writing sublayer
    activations: Tensor  # [S] feature activation; 1 for tokens and errors

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def feature_layer(self) -> Tensor:
        """[S] long: the layer of each transcoder (MLP) feature, −1 for every other source."""
        if "_feature_layer" not in self.__dict__:
            self.__dict__["_feature_layer"] = torch.tensor(
                [n.layer if n.kind == "mlp_feature" else -1 for n in self.nodes], dtype=torch.long)
        return self.__dict__["_feature_layer"]


def feature_writes(rm: ReplacementModel, kind: str, layer: int, index: Tensor | None = None) -> Tensor:
    """[d_sae, d_model] (or [len(index), d_model] for the features in `index`): what one unit of each feature writes
    into the residual stream. Pass `index` for a few features: an attention SAE's writes go through W_O, and
    forming all d_sae of them costs d_sae × d_model² (seconds per layer at GPT-2 size)."""
    if kind == "attn":
        d = rm.attention_saes[layer]
        W_dec = d.W_dec if index is None else d.W_dec[index]
        return W_dec.to(rm.W_O_cat(layer).dtype) @ rm.W_O_cat(layer)
    tc = rm.transcoders[layer]
    W_dec = tc.decoder_to(layer) if isinstance(tc, CLTLayer) else tc.W_dec
    return W_dec if index is None else W_dec[index]


def later_writes(rm: ReplacementModel, src: Sources, layer: int) -> tuple[Tensor, Tensor]:
    """(rows [R], writes [R, d_model]): what the CLT features encoded at layers before `layer` write into MLP
    `layer`'s output — ``a · W_dec_l[i, layer − l]`` — beyond their first write at their own layer. Empty without a
    cross-layer transcoder."""
    rows_all, writes = [], []
    feature_layer = src.feature_layer
    for l0 in range(layer):
        tc = rm.transcoders.get(l0)
        if not isinstance(tc, CLTLayer):
            continue
        rows = torch.nonzero(feature_layer == l0).flatten()
        if len(rows):
            index = torch.tensor([src.nodes[r].index for r in rows.tolist()])
            dtype = src.vectors.dtype
            writes.append(src.activations[rows, None] * tc.decoder_to(layer)[index].to(dtype))
            rows_all.append(rows)
    if not rows_all:
        return torch.zeros(0, dtype=torch.long), src.vectors.new_zeros(0, src.vectors.shape[1])
    return torch.cat(rows_all), torch.cat(writes)


@torch.no_grad()
def collect_sources(rm: ReplacementModel, cache: ReplacementCache) -> Sources:
    """Every source node of the cached prompt, in forward order (site, then position, then feature index)."""
    model = rm.model
    n = cache.n_pos
    dtype = model.W_E.dtype
    nodes: list[Node] = [Node("token", -1, p, int(t)) for p, t in enumerate(cache.tokens.tolist())]
    vecs = [cache.resid_pre[0].to(dtype)]  # W_E[t] (+ W_pos[p]): the embedding as the model computed it
    pos = [torch.arange(n)]
    site = [torch.zeros(n, dtype=torch.long)]
    acts = [torch.ones(n, dtype=dtype)]
    for layer in range(rm.n_layers):
        for kind, dicts, site_id in (("attn", rm.attention_saes, attn_site(layer)),
                                     ("mlp", rm.transcoders, mlp_site(layer))):
            d = dicts.get(layer)
            if d is None and kind == "attn":
                continue  # a linear channel, not a source
            if kind == "mlp" and not rm.has_mlp:
                continue  # attention-only model
            if d is not None:
                codes = cache.codes[d.cfg.name]
                p_idx, f_idx = torch.nonzero(codes, as_tuple=True)
                a = codes[p_idx, f_idx].to(dtype)
                write = a[:, None] * feature_writes(rm, kind, layer, f_idx).to(dtype)
                post = rm.attn_out_scale(cache, layer) if kind == "attn" else None
                vecs.append(write if post is None else write * post[p_idx].to(dtype))
                nodes += [Node(f"{kind}_feature", layer, p, i) for p, i in zip(p_idx.tolist(), f_idx.tolist(),
                                                                               strict=True)]
                pos.append(p_idx)
                site.append(torch.full_like(p_idx, site_id))
                acts.append(a)
            vecs.append(cache.error_writes[site_name(kind, layer)].to(dtype))
            nodes += [Node(f"{kind}_error", layer, p, -1) for p in range(n)]
            pos.append(torch.arange(n))
            site.append(torch.full((n,), site_id, dtype=torch.long))
            acts.append(torch.ones(n, dtype=dtype))
    return Sources(nodes, torch.cat(vecs), torch.cat(pos), torch.cat(site), torch.cat(acts))


@torch.no_grad()
def constant_writes(rm: ReplacementModel, cache: ReplacementCache | None = None) -> list[Tensor]:
    """Per site [d_model] (same at every position), or [pos, d_model] for an attention site behind Gemma-2's frozen
    post-norm (which needs `cache`): the node-independent part of what that site writes.

    Site 0 (embeddings) writes nothing constant; an attention site without an SAE has no entry of its own (its
    constant output is carried by the linear channel, which the reverse and autograd engines run).
    """
    dtype = rm.model.W_E.dtype
    zero = torch.zeros(rm.cfg.d_model, dtype=dtype, device=rm.model.W_E.device)
    out = [zero]
    for layer in range(rm.n_layers):
        sae = rm.attention_saes.get(layer)
        attn = rm.model.blocks[layer].attn
        write = sae.b_dec.to(dtype) @ rm.W_O_cat(layer) + attn.b_O if sae is not None else zero
        if sae is not None and rm.has_post_norm:
            if cache is None:
                raise ValueError("constant_writes: a model with post-norms needs the cache (its frozen scales)")
            write = write * rm.attn_out_scale(cache, layer).to(dtype)
        out.append(write)
        tc = rm.transcoders.get(layer)
        out.append(tc.b_dec.to(dtype) if tc is not None else zero)
    return out
