"""The attribution graph: a typed node table and sparse weighted edges.

A node is a `Node` value — ``(kind, layer, pos, index)`` — never a row number or a string to parse. The graph keeps
nodes in a tuple; edges are a sparse matrix ``A[target_row, source_row] = weight`` (direct effect of the source on
the target's pre-activation in the frozen local replacement model). Edges into attention-SAE features may carry a
per-head breakdown (``head_weights[k]`` for edge k, summing to its weight).

Kinds:

* ``token``: the embedding of the token at ``pos`` (``index`` = vocabulary id; position embedding included);
* ``attn_feature`` / ``mlp_feature``: an active attention-SAE / transcoder feature (``index`` = feature id);
* ``attn_error`` / ``mlp_error``: the dictionary's error term at (layer, pos) (``index`` = -1);
* ``logit``: a target logit or logit difference at the last position (``index`` = vocabulary id of the token, or
  -1 for a contrast);
* ``constant``: the constant term of one target (biases), ``index`` = row of that target.

Layers: attention features of layer L have ``layer = L``; so do transcoder features; within a layer attention comes
before the MLP (`Node.order`). Tokens have layer -1 and logits ``n_layers``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

NodeKind = Literal["token", "attn_feature", "mlp_feature", "attn_error", "mlp_error", "logit", "constant"]
SOURCE_KINDS: tuple[str, ...] = ("token", "attn_feature", "mlp_feature", "attn_error", "mlp_error", "constant")
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
               "logit": 3, "constant": 0}[self.kind]
        return (self.layer, sub)

    def to_json(self) -> list:
        return [self.kind, self.layer, self.pos, self.index]

    @classmethod
    def from_json(cls, v: list) -> Node:
        return cls(str(v[0]), int(v[1]), int(v[2]), int(v[3]))  # type: ignore[arg-type]

    def short(self) -> str:
        """A compact human label (for display only; identity is the tuple)."""
        tag = {"token": "E", "attn_feature": "A", "mlp_feature": "M", "attn_error": "errA", "mlp_error": "errM",
               "logit": "logit", "constant": "const"}[self.kind]
        return f"{tag}{self.layer}[{self.pos}]#{self.index}"


@dataclass
class Graph:
    """Nodes, their activations, and sparse edges ``A[target, source]``."""

    nodes: tuple[Node, ...]
    activations: Tensor  # [n_nodes] node value: feature activation, logit value, 1 for tokens/errors/constants
    edge_index: Tensor  # [2, n_edges] long: (target_row, source_row)
    edge_weight: Tensor  # [n_edges]
    head_weights: Tensor | None = None  # [n_edges, n_heads] for edges into attention features (0 elsewhere)
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.nodes)
        if self.activations.shape != (n,):
            raise ValueError(f"activations must have shape ({n},)")
        if self.edge_index.shape[0] != 2 or self.edge_index.shape[1] != self.edge_weight.shape[0]:
            raise ValueError("edge_index must be [2, n_edges] matching edge_weight")
        self._row = {node: i for i, node in enumerate(self.nodes)}
        if len(self._row) != n:
            raise ValueError("duplicate nodes")

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def n_edges(self) -> int:
        return int(self.edge_weight.shape[0])

    def row(self, node: Node) -> int:
        return self._row[node]

    def adjacency(self) -> Tensor:
        """Dense [n_nodes, n_nodes] matrix A[target, source]."""
        a = torch.zeros(self.n_nodes, self.n_nodes, dtype=self.edge_weight.dtype)
        a[self.edge_index[0], self.edge_index[1]] = self.edge_weight
        return a

    def nodes_of(self, *kinds: str) -> list[Node]:
        return [n for n in self.nodes if n.kind in kinds]

    def incoming(self, node: Node) -> dict[Node, float]:
        mask = self.edge_index[0] == self.row(node)
        return {self.nodes[int(s)]: float(w) for s, w in zip(self.edge_index[1][mask], self.edge_weight[mask],
                                                             strict=True)}

    def to_networkx(self):
        """A networkx DiGraph (source → target), node attributes from the node table, edge attribute weight."""
        import networkx as nx

        g = nx.DiGraph()
        for i, node in enumerate(self.nodes):
            g.add_node(i, kind=node.kind, layer=node.layer, pos=node.pos, index=node.index,
                       activation=float(self.activations[i]))
        for (t, s), w in zip(self.edge_index.T.tolist(), self.edge_weight.tolist(), strict=True):
            g.add_edge(s, t, weight=w)
        return g
