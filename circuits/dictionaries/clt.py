"""Cross-layer transcoders (CLTs; Ameisen et al. 2025): one encoder per layer, decoders to every later MLP output.

A CLT over n layers has, for each layer l,

    codes_l  = act((x_l − b_in_l) @ W_enc_l + b_enc_l)       x_l: layer l's ln2.hook_normalized [..., d_model]
    W_dec_l  [d_sae, n_layers − l, d_model]                    W_dec_l[:, j] writes hook_mlp_out of layer l + j

and layer l' 's MLP output is reconstructed by every encoder layer at or before it:

    mlp_out_l' ≈ Σ_{l ≤ l'} codes_l @ W_dec_l[:, l' − l] + b_dec_l'

The error of layer l' (one error node per layer and position) is ``mlp_out_l' − that sum``. A CLT feature is one
graph node at its encoder layer (kind ``mlp_feature``) whose write reaches the residual stream at every later MLP
site.

`CrossLayerTranscoder` holds its layers as `CLTLayer` modules. Each layer is also a `Transcoder`-shaped view (name
``transcoder_L{l}``, its encoder, its codes and its error), so a `DictionarySet` or `ReplacementModel` treats it as
layer l's transcoder; only its output differs: `CLTLayer.reconstruct(codes, x, upstream)` needs the codes of the
CLT's earlier layers from the same forward pass (`upstream`: layer -> codes), and `decode(codes)` alone is refused.
``CLTLayer.W_dec`` is each feature's decoders summed over output layers (its total direct write, which the
dashboards' logit effect uses); ``decoder_to(l')`` is one output layer's decoder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from circuits.dictionaries.activations import ActivationName
from circuits.dictionaries.base import DictionaryConfig, Transcoder


@dataclass(frozen=True)
class CLTConfig:
    """Shape and activation of a cross-layer transcoder over layers 0..n_layers−1 of one model."""

    n_layers: int
    d_model: int
    d_sae: int  # features per encoder layer
    activation: ActivationName = "topk"
    k: int | None = 32  # active features per token and layer for topk / batchtopk
    context_size: int = 128
    model_name: str = "organism"

    def __post_init__(self):
        if min(self.n_layers, self.d_model, self.d_sae) <= 0:
            raise ValueError("n_layers, d_model and d_sae must be positive")
        if self.activation in ("topk", "batchtopk") and not (self.k and self.k > 0):
            raise ValueError(f"activation {self.activation!r} needs a positive k")

    def layer_config(self, layer: int) -> DictionaryConfig:
        return DictionaryConfig("transcoder", layer, self.d_model, self.d_sae, self.d_model,
                                activation=self.activation, k=self.k, context_size=self.context_size,
                                model_name=self.model_name)

    def to_dict(self) -> dict:
        return {"kind": "cross_layer_transcoder", **asdict(self)}

    @property
    def name(self) -> str:
        """Folder name in a set."""
        return "clt"


class CLTLayer(Transcoder):
    """Layer `layer` of a CLT: its encoder (a transcoder's), its decoders to layers layer..n_layers−1
    (``W_dec_out [d_sae, n_out, d_model]``) and the output bias ``b_dec`` of MLP `layer`."""

    plain_decoder = False  # W_dec_out instead; W_dec is the summed decoder (a property)

    def __init__(self, cfg: CLTConfig, layer: int, dtype: torch.dtype = torch.float32):
        super().__init__(cfg.layer_config(layer), dtype)
        self.W_dec_out = nn.Parameter(torch.zeros(cfg.d_sae, cfg.n_layers - layer, cfg.d_model, dtype=dtype))
        object.__setattr__(self, "clt_cfg", cfg)  # plain attribute (not a submodule)

    @property
    def W_dec(self) -> Tensor:  # type: ignore[override]
        """[d_sae, d_model]: each feature's decoders summed over its output layers (its total direct write)."""
        return self.W_dec_out.sum(1)

    def decoder_to(self, layer: int) -> Tensor:
        """[d_sae, d_model]: the decoder of these features into MLP `layer` (≥ this layer)."""
        if not self.cfg.layer <= layer < self.clt_cfg.n_layers:
            raise ValueError(f"CLT layer {self.cfg.layer} writes layers {self.cfg.layer}..{self.clt_cfg.n_layers - 1},"
                             f" not {layer}")
        return self.W_dec_out[:, layer - self.cfg.layer]

    def decode(self, codes: Tensor) -> Tensor:
        raise NotImplementedError("a CLT layer's output depends on the codes of the CLT's earlier layers; use "
                                  "reconstruct(codes, x, upstream) or CrossLayerTranscoder.reconstruct")

    def reconstruct(self, codes: Tensor, x: Tensor, upstream: dict[int, Tensor] | None = None) -> Tensor:
        """MLP `layer`'s output: Σ over encoder layers l ≤ layer of codes_l @ W_dec_l[:, layer − l] + b_dec.

        `upstream[l]` must hold the codes of every earlier layer l of the same forward pass (same leading shape);
        `codes` are this layer's own."""
        me = self.cfg.layer
        out = codes @ self.W_dec_out[:, 0] + self.b_dec
        if me == 0:
            return out
        layers = self.clt_layers
        if upstream is None or any(layer not in upstream for layer in range(me)):
            raise ValueError(f"CLT layer {me} needs the codes of layers 0..{me - 1} of the same forward pass")
        for layer in range(me):
            out = out + upstream[layer].to(out.dtype) @ layers[layer].decoder_to(me)
        return out

    @property
    def clt_layers(self) -> list[CLTLayer]:
        return self.__dict__["_clt_layers"]

    def weights(self) -> dict[str, Tensor]:
        out = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec_out, "b_dec": self.b_dec}
        if hasattr(self.activation, "threshold"):
            out["threshold"] = self.activation.threshold
        return out


class CrossLayerTranscoder(nn.Module):
    """All layers of a CLT; ``clt[l]`` (or ``clt.layers[l]``) is layer l's `CLTLayer`."""

    def __init__(self, cfg: CLTConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList([CLTLayer(cfg, layer, dtype) for layer in range(cfg.n_layers)])
        for layer in self.layers:  # plain attributes, not submodules: no module cycle
            layer.__dict__["_clt_layers"] = list(self.layers)
            layer.__dict__["clt"] = self

    def __getitem__(self, layer: int) -> CLTLayer:
        return self.layers[layer]  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.cfg.n_layers

    @property
    def name(self) -> str:
        return self.cfg.name

    def encode(self, xs: list[Tensor]) -> list[Tensor]:
        """Codes of every layer from its inputs xs[l] [..., d_model]."""
        return [layer.encode(x) for layer, x in zip(self.layers, xs, strict=True)]

    def reconstruct(self, codes: list[Tensor], xs: list[Tensor] | None = None) -> list[Tensor]:
        """Every layer's MLP-output reconstruction [..., d_model] from all layers' codes."""
        upstream = dict(enumerate(codes))
        return [layer.reconstruct(c, None, upstream) for layer, c in zip(self.layers, codes, strict=True)]

    def forward(self, xs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        codes = self.encode(xs)
        return codes, self.reconstruct(codes)

    def __repr__(self) -> str:
        c = self.cfg
        return (f"CrossLayerTranscoder(n_layers={c.n_layers}, d_model={c.d_model}, d_sae={c.d_sae} per layer, "
                f"activation={c.activation})")


def is_clt_layer(d) -> bool:
    return isinstance(d, CLTLayer)
