"""The attribution graph: a typed node table and sparse weighted edges.

A node is a `Node` value — ``(kind, layer, pos, index)`` — never a row number or a string to parse. The graph keeps
nodes in a tuple; edges are a sparse matrix ``A[target_row, source_row] = weight`` (direct effect of the source on
the target's pre-activation in the frozen local replacement model). Edges into attention-SAE features may carry a
per-head breakdown (``head_weights[k]`` for edge k, summing to its weight).

Kinds:

* ``token``: the embedding of the token at ``pos`` (``index`` = vocabulary id; position embedding included);
* ``attn_feature`` / ``mlp_feature``: an active attention-SAE / transcoder feature (``index`` = feature id);
* ``attn_error`` / ``mlp_error``: the dictionary's error term at (layer, pos) (``index`` = -1);
* ``logit``: a target logit at the last position (``index`` = vocabulary id of the token);
* ``logit_diff``: a contrast target "token A minus token B" at the last position (``index`` = id of A; the pair is in
  ``metadata["targets"]``).

Every node that is a target of edges (features, logits) also has a **constant term** (`constants`: everything that
does not depend on any node — biases, LayerNorm offsets — read through the frozen model) and its
**pre-activation** (`pre_activations`), so that for every such node

    Σ incoming edge weights + constants[node] (+ dropped[node]) = pre_activations[node]

exactly (``dropped`` is the sum of edges below an optional storage tolerance; zero by default).

**BOS folding** (`fold_bos`): the features and error nodes at the beginning-of-sequence position are the same on
every prompt (a causal model sees nothing else there), so they explain nothing about *this* prompt. The default
graph folds them away: each edge from such a node into a node that stays is added to that node's constant (and
recorded in ``bos_constants``, the BOS part of the constant), so the identity above still holds exactly.

Layers: attention features of layer L have ``layer = L``; so do transcoder features; within a layer attention comes
before the MLP (`Node.order`). Tokens have layer -1 and logits ``n_layers``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from circuits.nodes import (  # noqa: F401  (re-exported: the graph's node vocabulary)
    ERROR_KINDS,
    FEATURE_KINDS,
    SOURCE_KINDS,
    TARGET_KINDS,
    Node,
    NodeKind,
)


@dataclass
class Graph:
    """Nodes, their activations, and sparse edges ``A[target, source]``."""

    nodes: tuple[Node, ...]
    activations: Tensor  # [n_nodes] node value: feature activation, logit value, 1 for tokens/errors
    edge_index: Tensor  # [2, n_edges] long: (target_row, source_row)
    edge_weight: Tensor  # [n_edges]
    head_weights: Tensor | None = None  # [n_edges, n_heads] for edges into attention features (0 elsewhere)
    metadata: dict = field(default_factory=dict)
    constants: Tensor | None = None  # [n_nodes] constant term of each target node (0 for pure sources)
    pre_activations: Tensor | None = None  # [n_nodes] pre-activation of each target node (0 for pure sources)
    dropped: Tensor | None = None  # [n_nodes] sum of edges not stored (below the storage tolerance)
    target_weights: Tensor | None = None  # [n_nodes] weight of each target in influence (0 for non-targets)
    bos_constants: Tensor | None = None  # [n_nodes] the part of `constants` folded in from BOS nodes (`fold_bos`)

    def __post_init__(self):
        n = len(self.nodes)
        if self.activations.shape != (n,):
            raise ValueError(f"activations must have shape ({n},)")
        for name in ("constants", "pre_activations", "dropped", "target_weights", "bos_constants"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, torch.zeros(n, dtype=self.edge_weight.dtype))
            elif value.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},)")
        if self.edge_index.shape[0] != 2 or self.edge_index.shape[1] != self.edge_weight.shape[0]:
            raise ValueError("edge_index must be [2, n_edges] matching edge_weight")
        self._row = {node: i for i, node in enumerate(self.nodes)}
        if len(self._row) != n:
            raise ValueError("duplicate nodes")

    def __repr__(self) -> str:
        """One line (a notebook shows this, not 200k characters of tensors): nodes by kind, edges, targets,
        scores when they were computed."""
        kinds: dict[str, int] = {}
        for n in self.nodes:
            kinds[n.kind] = kinds.get(n.kind, 0) + 1
        parts = [f"{self.n_nodes} nodes ({', '.join(f'{v} {k}' for k, v in kinds.items())})",
                 f"{self.n_edges} edges"]
        targets = self.metadata.get("targets") or []
        if targets:
            parts.append("target " + ", ".join(f"{t.get('label', '?')} = {float(t.get('value', float('nan'))):.3f}"
                                               for t in targets[:3]) + (" ..." if len(targets) > 3 else ""))
        scores = self.metadata.get("scores")
        if isinstance(scores, dict) and scores:
            parts.append(", ".join(f"{k} {float(v):.3f}" for k, v in scores.items()))
        return f"Graph({'; '.join(parts)})"

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

    def incoming_sum(self) -> Tensor:
        """[n_nodes] Σ of stored incoming edge weights per node."""
        out = torch.zeros(self.n_nodes, dtype=self.edge_weight.dtype)
        return out.index_add_(0, self.edge_index[0], self.edge_weight)

    def explained_mask(self) -> Tensor:
        """[n_nodes] bool: nodes with incoming edges, a constant and a pre-activation (features and logit targets)."""
        return torch.tensor([n.kind in FEATURE_KINDS or n.kind in TARGET_KINDS for n in self.nodes], dtype=torch.bool)

    @property
    def targets(self) -> list[Node]:
        """Nodes with a positive target weight (the logits, the contrast, or the target feature)."""
        return [self.nodes[i] for i in torch.nonzero(self.target_weights > 0).flatten().tolist()]

    def subgraph(self, keep: Tensor, edge_mask: Tensor | None = None) -> Graph:
        """The graph restricted to nodes where the bool mask `keep` [n_nodes] is true, and to the edges between
        them (and in `edge_mask` [n_edges], when given)."""
        keep = keep.bool()
        new_row = torch.full((self.n_nodes,), -1, dtype=torch.long)
        new_row[keep] = torch.arange(int(keep.sum()))
        e_keep = keep[self.edge_index[0]] & keep[self.edge_index[1]]
        if edge_mask is not None:
            e_keep &= edge_mask
        return Graph(
            nodes=tuple(n for n, k in zip(self.nodes, keep.tolist(), strict=True) if k),
            activations=self.activations[keep], edge_index=new_row[self.edge_index[:, e_keep]],
            edge_weight=self.edge_weight[e_keep],
            head_weights=None if self.head_weights is None else self.head_weights[e_keep],
            metadata=dict(self.metadata), constants=self.constants[keep], pre_activations=self.pre_activations[keep],
            dropped=self.dropped[keep], target_weights=self.target_weights[keep],
            bos_constants=self.bos_constants[keep],
        )

    # -- serialisation (the format lives in circuits.export) ---------------------------------------------------

    def to_json(self) -> dict:
        """The JSON object of this graph (schema in ``circuits/schemas/graph.schema.json``); exact round trip."""
        from circuits.export import to_dict

        return to_dict(self)

    @classmethod
    def from_json(cls, data: dict) -> Graph:
        """Validate and load a JSON object written by `to_json` (errors name the bad field).

        `data` is the parsed object (a dict), not a file: a path (`str` or `os.PathLike`), JSON text or bytes raise
        a `TypeError` that names the loader to use — `circuits.export.read_json(path)` for a file,
        `circuits.export.loads(text)` for JSON text."""
        import os

        from circuits.export import from_dict

        if isinstance(data, str | bytes | bytearray | os.PathLike):
            if isinstance(data, str | bytes | bytearray) and data.lstrip()[:1] in ("{", b"{"):
                raise TypeError("Graph.from_json takes the parsed JSON object (a dict), not JSON text; for text or "
                                "bytes use circuits.export.loads(text)")
            raise TypeError(f"Graph.from_json takes the parsed JSON object (a dict), not a path ({data!s:.80}); to "
                            "load a graph file use circuits.export.read_json(path)")
        return from_dict(data)

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


def bos_mask(graph: Graph) -> Tensor:
    """[n_nodes] bool: the features and error nodes at the graph's BOS position (``metadata["bos_pos"]``), except
    targets. All false when the prompt has no BOS token."""
    pos = graph.metadata.get("bos_pos")
    if pos is None:
        return torch.zeros(graph.n_nodes, dtype=torch.bool)
    at_bos = torch.tensor([n.pos == pos and (n.kind in FEATURE_KINDS or n.kind in ERROR_KINDS) for n in graph.nodes],
                          dtype=torch.bool)
    return at_bos & ~(graph.target_weights > 0)


def fold_bos(graph: Graph) -> Graph:
    """The graph without its BOS features and BOS error nodes, their effects folded into constants.

    Nothing at the BOS position depends on the prompt (causal attention: position 0 sees only itself), so its
    features and error terms are the same on every prompt — attention-sink features that dominate every graph while
    saying nothing about this one. For each edge ``s → t`` with ``s`` at BOS and ``t`` not, ``w`` moves into
    ``constants[t]`` (and ``bos_constants[t]``); edges into BOS nodes go with them. Because only the bookkeeping
    changes, ``Σ incoming + constant (+ dropped) = pre-activation`` holds exactly for every remaining node, and the
    remaining edge weights are untouched. The BOS token node stays (tokens are the graph's inputs).

    ``metadata["bos_folded"]`` records the position and how many nodes and edges were folded; folding a folded graph
    (or one without a BOS token, ``metadata["bos_pos"] is None``) returns it unchanged.
    """
    if graph.metadata.get("bos_folded") is not None:
        return graph
    fold = bos_mask(graph)
    tgt, src = graph.edge_index
    into_kept = fold[src] & ~fold[tgt]
    add = torch.zeros(graph.n_nodes, dtype=graph.edge_weight.dtype).index_add_(
        0, tgt[into_kept], graph.edge_weight[into_kept])
    folded = Graph(graph.nodes, graph.activations, graph.edge_index, graph.edge_weight, graph.head_weights,
                   dict(graph.metadata), constants=graph.constants + add.to(graph.constants.dtype),
                   pre_activations=graph.pre_activations, dropped=graph.dropped,
                   target_weights=graph.target_weights,
                   bos_constants=graph.bos_constants + add.to(graph.bos_constants.dtype))
    out = folded.subgraph(~fold)
    out.metadata["bos_folded"] = {"pos": graph.metadata.get("bos_pos"), "nodes": int(fold.sum()),
                                  "edges": int((fold[src] | fold[tgt]).sum())}
    return out
