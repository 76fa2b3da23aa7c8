"""GraphML through networkx, every node and edge attribute included."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from circuits.export.dot import node_label
from circuits.export.graph_json import _atomic_write, node_id
from circuits.graph import Graph


def write_graphml(graph: Graph, path: Path) -> Path:
    """GraphML through networkx: node attributes kind, layer, pos, index, activation, pre_activation, constant,
    target_weight, label; edge attributes weight and (attention edges) heads as a JSON list."""
    import networkx as nx

    g = graph.to_networkx()
    for i, node in enumerate(graph.nodes):
        attrs = g.nodes[i]
        attrs.update(pre_activation=float(graph.pre_activations[i]), constant=float(graph.constants[i]),
                     target_weight=float(graph.target_weights[i]), label=node_label(graph, node),
                     node_id=node_id(node))
    if graph.head_weights is not None:
        has = graph.head_weights.abs().sum(1) > 0
        for k in torch.nonzero(has).flatten().tolist():
            t, s = graph.edge_index[:, k].tolist()
            g.edges[s, t]["heads"] = json.dumps(graph.head_weights[k].tolist())
    g.graph.update(model=str(graph.metadata.get("model", "")), prompt=str(graph.metadata.get("prompt", "")),
                   tokens=json.dumps(graph.metadata.get("tokens", [])))
    return _atomic_write(path, lambda tmp: nx.write_graphml(g, str(tmp)))
