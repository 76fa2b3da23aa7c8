"""What changes between two graphs of prompts with the same token positions."""

from __future__ import annotations

from dataclasses import dataclass

from circuits.graph import Graph, Node


@dataclass
class GraphDiff:
    added_nodes: list[Node]
    removed_nodes: list[Node]
    added_edges: list[tuple[Node, Node, float]]  # (source, target, weight in B)
    removed_edges: list[tuple[Node, Node, float]]  # (source, target, weight in A)
    changed_edges: list[tuple[Node, Node, float, float]]  # (source, target, weight A, weight B)


def _edge_map(graph: Graph) -> dict[tuple[Node, Node], float]:
    return {(graph.nodes[s], graph.nodes[t]): w
            for (t, s), w in zip(graph.edge_index.T.tolist(), graph.edge_weight.tolist(), strict=True)}


def diff(a: Graph, b: Graph, rel_tol: float = 0.1) -> GraphDiff:
    """Nodes and edges that appear, vanish, or change weight by more than `rel_tol` (relative) from A to B.

    Nodes are matched by identity (kind, layer, position, index): compare graphs of prompts with the same token
    positions (e.g. ABBA against BABA with names swapped)."""
    na, nb = set(a.nodes), set(b.nodes)
    ea, eb = _edge_map(a), _edge_map(b)
    changed = [(s, t, wa, eb[(s, t)]) for (s, t), wa in ea.items() if (s, t) in eb
               and abs(eb[(s, t)] - wa) > rel_tol * max(abs(wa), abs(eb[(s, t)]))]
    def key(e):
        return (-abs(e[2]))
    return GraphDiff(sorted(nb - na), sorted(na - nb),
                     sorted([(s, t, w) for (s, t), w in eb.items() if (s, t) not in ea], key=key),
                     sorted([(s, t, w) for (s, t), w in ea.items() if (s, t) not in eb], key=key),
                     sorted(changed, key=lambda e: -abs(e[3] - e[2])))
