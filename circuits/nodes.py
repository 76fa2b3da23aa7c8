"""Node identities of an attribution graph: the `Node` value and the kind constants.

Kept apart from `circuits.graph` (which needs torch for the edges) so that parsing and printing ids
(`circuits.ids`), and the CLI's checks of them before a model loads, import no tensor library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NodeKind = Literal["token", "attn_feature", "mlp_feature", "attn_error", "mlp_error", "logit", "logit_diff"]
SOURCE_KINDS: tuple[str, ...] = ("token", "attn_feature", "mlp_feature", "attn_error", "mlp_error")
TARGET_KINDS: tuple[str, ...] = ("logit", "logit_diff")
FEATURE_KINDS: tuple[str, ...] = ("attn_feature", "mlp_feature")
ERROR_KINDS: tuple[str, ...] = ("attn_error", "mlp_error")


@dataclass(frozen=True, order=True)
class Node:
    """A graph node's identity."""

    kind: NodeKind
    layer: int
    pos: int
    index: int

    @property
    def order(self) -> tuple[int, int]:
        """(layer, sublayer) in forward order: token < attn L < mlp L < attn L+1 < ... < logit."""
        sub = {"token": 0, "attn_feature": 1, "attn_error": 1, "mlp_feature": 2, "mlp_error": 2,
               "logit": 3, "logit_diff": 3}[self.kind]
        return (self.layer, sub)

    @property
    def sublayer_rank(self) -> int:
        """The sublayer as one integer, increasing in forward order (tokens lowest, logits highest); every edge
        goes from a lower rank to a higher one. Drawings use it as the y coordinate."""
        return (self.layer + 1) * 4 + self.order[1]

    @property
    def sublayer_name(self) -> str:
        """The sublayer's label in drawings: "tokens", "attn L", "mlp L" or "logits"."""
        if self.kind == "token":
            return "tokens"
        if self.kind.startswith("logit"):
            return "logits"
        return f"{'attn' if self.kind.startswith('attn') else 'mlp'} {self.layer}"

    def to_json(self) -> list:
        return [self.kind, self.layer, self.pos, self.index]

    @classmethod
    def from_json(cls, v: list) -> Node:
        return cls(str(v[0]), int(v[1]), int(v[2]), int(v[3]))  # type: ignore[arg-type]

    def short(self) -> str:
        """The canonical id (``M3#1184@14``; see `circuits.ids`), for display; identity is the tuple."""
        from circuits.ids import format_node

        return format_node(self)
