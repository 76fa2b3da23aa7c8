"""Sparse dictionaries that replace model components: transcoders (MLPs) and attention-output SAEs (hook_z).

Both share one interface (`Dictionary`):

    codes  = act((x − b_in) @ W_enc + b_enc)          x: [..., d_in]      codes: [..., d_sae]
    output = codes @ W_dec + b_dec                                         output: [..., d_out]

* `Transcoder` (Dunefsky et al. 2024) reads ``blocks.L.ln2.hook_normalized`` and predicts
  ``blocks.L.hook_mlp_out``; input centering ``b_in`` and output bias ``b_dec`` are separate parameters. A **skip
  transcoder** (``cfg.skip``; Paulo et al. 2025) adds a linear term of its raw input to the output:
  ``output = codes @ W_dec + b_dec + x @ W_skip.T`` with ``W_skip [d_out, d_in]`` (SAELens' and circuit-tracer's
  orientation). `reconstruct(codes, x)` is the full output; `decode(codes)` the feature part and bias only.
* `AttentionSAE` (Kissane et al. 2024) reads and reconstructs ``blocks.L.attn.hook_z`` flattened over heads
  (d_in = d_out = n_heads·d_head); input centering is its own decoder bias (``b_in`` is ``b_dec``). Its write to
  the residual stream is ``output @ W_O_cat``: feature i writes ``codes_i · (W_dec[i] @ W_O_cat)``.

The error term ``target − output`` is never part of the dictionary: the replacement model adds it back, so the
spliced forward pass is exact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from circuits.dictionaries.activations import ActivationName, make_activation
from circuits.model import hook_attn_z, hook_ln2_normalized, hook_mlp_out

DictionaryKind = Literal["transcoder", "attention_sae"]


@dataclass(frozen=True)
class DictionaryConfig:
    """Shape, placement and activation of one dictionary."""

    kind: DictionaryKind
    layer: int
    d_in: int
    d_sae: int
    d_out: int
    activation: ActivationName = "topk"
    k: int | None = 32  # active features per token for topk / batchtopk
    n_heads: int | None = None  # attention SAEs: z is [n_heads, d_head] flattened to d_in
    context_size: int = 128  # tokens per sequence the dictionary was trained on
    model_name: str = "organism"
    skip: bool = False  # transcoders: output adds x @ W_skip.T (a skip transcoder)

    def __post_init__(self):
        if self.kind not in ("transcoder", "attention_sae"):
            raise ValueError(f"unknown dictionary kind {self.kind!r}")
        if self.skip and self.kind != "transcoder":
            raise ValueError("only transcoders can have a skip connection (W_skip)")
        if min(self.d_in, self.d_sae, self.d_out) <= 0 or self.layer < 0:
            raise ValueError("d_in, d_sae, d_out must be positive and layer non-negative")
        if self.kind == "attention_sae":
            if self.d_in != self.d_out:
                raise ValueError("an attention SAE reconstructs z: d_in must equal d_out")
            if not self.n_heads or self.d_in % self.n_heads:
                raise ValueError("an attention SAE needs n_heads dividing d_in (= n_heads * d_head)")
        if self.activation in ("topk", "batchtopk") and not (self.k and self.k > 0):
            raise ValueError(f"activation {self.activation!r} needs a positive k")

    @property
    def hook_in(self) -> str:
        return hook_ln2_normalized(self.layer) if self.kind == "transcoder" else hook_attn_z(self.layer)

    @property
    def hook_out(self) -> str:
        return hook_mlp_out(self.layer) if self.kind == "transcoder" else hook_attn_z(self.layer)

    @property
    def site(self) -> str:
        """The residual-stream site it replaces, as graph node kinds name it: "mlp" or "attn"."""
        return "mlp" if self.kind == "transcoder" else "attn"

    @property
    def d_head(self) -> int | None:
        return self.d_in // self.n_heads if self.n_heads else None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def name(self) -> str:
        """Folder name in a set: ``transcoder_L0``, ``attn_sae_L2``."""
        return f"{'transcoder' if self.kind == 'transcoder' else 'attn_sae'}_L{self.layer}"


class DictionaryOutput(NamedTuple):
    codes: Tensor  # [..., d_sae]
    output: Tensor  # [..., d_out]


class Dictionary(nn.Module):
    """Base class: encoder, activation, decoder. Subclasses fix the hook points and input reshaping."""

    plain_decoder = True  # W_dec [d_sae, d_out] is a parameter (a cross-layer transcoder's layer has its own)

    def __init__(self, cfg: DictionaryConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        if self.plain_decoder:
            self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_out, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out, dtype=dtype))
        self.W_skip = nn.Parameter(torch.zeros(cfg.d_out, cfg.d_in, dtype=dtype)) if cfg.skip else None
        self.activation = make_activation(cfg.activation, cfg.d_sae, cfg.k)

    # -- the shared interface -----------------------------------------------------------------------------------

    @property
    def b_in(self) -> Tensor:
        """Input centering [d_in]."""
        raise NotImplementedError

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def hook_in(self) -> str:
        return self.cfg.hook_in

    @property
    def hook_out(self) -> str:
        return self.cfg.hook_out

    @property
    def context_size(self) -> int:
        return self.cfg.context_size

    def flatten_input(self, x: Tensor) -> Tensor:
        """Hook activation → [..., d_in] (attention SAEs flatten heads)."""
        return x

    def unflatten_output(self, y: Tensor) -> Tensor:
        """[..., d_out] → the shape of the output hook."""
        return y

    def pre_activation(self, x: Tensor) -> Tensor:
        """Encoder pre-activations [..., d_sae] for inputs [..., d_in]."""
        return (x - self.b_in) @ self.W_enc + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        """Sparse codes [..., d_sae] for inputs [..., d_in]."""
        return self.activation(self.pre_activation(x))

    def decode(self, codes: Tensor) -> Tensor:
        """Output [..., d_out] from codes [..., d_sae]."""
        return codes @ self.W_dec + self.b_dec

    def skip_write(self, x: Tensor) -> Tensor | None:
        """[..., d_out]: the skip term ``x @ W_skip.T`` of raw inputs x [..., d_in]; None without a skip."""
        return None if self.W_skip is None else x @ self.W_skip.T

    def reconstruct(self, codes: Tensor, x: Tensor, upstream: dict[int, Tensor] | None = None) -> Tensor:
        """The full output [..., d_out]: ``decode(codes)`` plus the skip term of the input x [..., d_in].

        `upstream` (layer -> codes of earlier layers in the same forward pass) is used by cross-layer transcoders
        only; a per-layer dictionary ignores it."""
        out = self.decode(codes)
        skip = self.skip_write(x)
        return out if skip is None else out + skip

    def forward(self, x: Tensor) -> DictionaryOutput:
        codes = self.encode(x)
        return DictionaryOutput(codes, self.reconstruct(codes, x))

    @torch.no_grad()
    def set_decoder_norm_to_unit(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    def weights(self) -> dict[str, Tensor]:
        """Every tensor that defines the dictionary (SAELens names, plus ``threshold`` for JumpReLU)."""
        out = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if hasattr(self.activation, "threshold"):
            out["threshold"] = self.activation.threshold
        if self.W_skip is not None:
            out["W_skip"] = self.W_skip
        return out

    def __repr__(self) -> str:
        c = self.cfg
        skip = ", skip" if c.skip else ""
        return (f"{type(self).__name__}(layer={c.layer}, d_in={c.d_in}, d_sae={c.d_sae}, "
                f"activation={c.activation}{skip})")


class Transcoder(Dictionary):
    """Replaces MLP `layer`: reads ln2.hook_normalized [..., d_model], predicts hook_mlp_out [..., d_model]."""

    def __init__(self, cfg: DictionaryConfig, dtype: torch.dtype = torch.float32):
        if cfg.kind != "transcoder":
            raise ValueError("Transcoder needs a config of kind 'transcoder'")
        super().__init__(cfg, dtype)
        self.b_in_param = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))

    @property
    def b_in(self) -> Tensor:
        return self.b_in_param


class AttentionSAE(Dictionary):
    """Replaces attention `layer`'s output: reads and reconstructs hook_z [..., n_heads, d_head] (flattened)."""

    def __init__(self, cfg: DictionaryConfig, dtype: torch.dtype = torch.float32):
        if cfg.kind != "attention_sae":
            raise ValueError("AttentionSAE needs a config of kind 'attention_sae'")
        super().__init__(cfg, dtype)

    @property
    def b_in(self) -> Tensor:
        return self.b_dec

    def flatten_input(self, x: Tensor) -> Tensor:
        return x.reshape(*x.shape[:-2], self.cfg.d_in)

    def unflatten_output(self, y: Tensor) -> Tensor:
        return y.reshape(*y.shape[:-1], self.cfg.n_heads, self.cfg.d_head)

    def residual_write(self, W_O: Tensor) -> Tensor:
        """[d_sae, d_model]: each feature's write to the residual stream, ``W_dec[i] @ W_O_cat``.

        `W_O` is TransformerLens ``attn.W_O`` [n_heads, d_head, d_model]."""
        return self.W_dec @ W_O.reshape(self.cfg.d_in, -1)


def make_dictionary(cfg: DictionaryConfig, dtype: torch.dtype = torch.float32) -> Dictionary:
    return (Transcoder if cfg.kind == "transcoder" else AttentionSAE)(cfg, dtype)
