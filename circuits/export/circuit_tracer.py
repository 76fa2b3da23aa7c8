"""circuit-tracer / Neuronpedia graph JSON (the package's docstring describes the mapping of attention nodes)."""

from __future__ import annotations

import json
from pathlib import Path

from circuits.export.dot import node_label
from circuits.export.graph_json import _atomic_write, node_id
from circuits.graph import Graph, Node


def _ct_node_id(node: Node, n_layers: int) -> str:
    if node.kind == "mlp_feature":
        return f"{node.layer}_{node.index}_{node.pos}"
    if node.kind == "attn_feature":
        return f"A{node.layer}_{node.index}_{node.pos}"
    if node.kind == "mlp_error":
        return f"0_{node.layer}_{node.pos}"
    if node.kind == "attn_error":
        return f"A0_{node.layer}_{node.pos}"
    if node.kind == "token":
        return f"E_{node.index}_{node.pos}"
    return f"{n_layers + 1}_{node.index}_{node.pos}"


#: circuit-tracer's frontend keys nodes by layer, ``feature`` and position: attention features get this offset added
#: to their ``feature`` field (never to their node id) so they cannot collide with a transcoder feature.
CT_ATTN_FEATURE_OFFSET = 10_000_000

CT_FEATURE_TYPES = {"mlp_feature": "cross layer transcoder", "attn_feature": "attention sae",
                    "mlp_error": "mlp reconstruction error", "attn_error": "attention reconstruction error",
                    "token": "embedding", "logit": "logit", "logit_diff": "logit"}


def _json_id(value) -> str:
    """The canonical id of a node stored as ``[kind, layer, pos, index]`` in the UI state."""
    return node_id(Node.from_json(value))


def to_circuit_tracer(graph: Graph, slug: str = "circuits-graph", influence=None) -> dict:
    """The graph in circuit-tracer's frontend JSON layout (see the module docstring for the mapping)."""
    meta = graph.metadata
    n_layers = int(meta.get("n_layers", 0))
    n_pos = len(meta.get("tokens", [])) or (max(n.pos for n in graph.nodes) + 1)
    probs = {tuple(t["node"]): t.get("probability") for t in meta.get("targets", [])}
    nodes = []
    for i, node in enumerate(graph.nodes):
        is_logit = node.kind in ("logit", "logit_diff")
        layer = "E" if node.kind == "token" else (str(n_layers + 1) if is_logit else str(node.layer))
        if node.kind == "attn_feature":
            feature = CT_ATTN_FEATURE_OFFSET + node.index
        elif node.kind == "mlp_feature" or node.kind == "token" or is_logit:
            feature = node.index
        else:
            feature = -2 if node.kind == "attn_error" else -1
        nid = _ct_node_id(node, n_layers)
        p = probs.get(tuple(node.to_json()))
        clerp = node_label(graph, node)
        if is_logit:
            clerp = f'Output "{clerp.removeprefix("logit ")}"' + (f" (p={p:.3f})" if p is not None else "")
        nodes.append({
            "node_id": nid, "feature": int(feature), "layer": layer, "ctx_idx": int(node.pos),
            "feature_type": CT_FEATURE_TYPES[node.kind], "token_prob": float(p) if p is not None else 0.0,
            "is_target_logit": bool(is_logit), "run_idx": 0, "reverse_ctx_idx": int(n_pos - 1 - node.pos),
            "jsNodeId": f"{nid.rsplit('_', 1)[0]}-0" if node.kind.endswith("_feature") else nid,
            "clerp": clerp, "influence": float(influence[i]) if influence is not None else 0.0,
            "activation": float(graph.activations[i]),
        })
    links = [{"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": float(w)}
             for (t, s), w in zip(graph.edge_index.T.tolist(), graph.edge_weight.tolist(), strict=True)]
    ui = meta.get("ui", {})
    to_ct = {node_id(n): nodes[i]["node_id"] for i, n in enumerate(graph.nodes)}
    pruning = meta.get("pruning", {})
    return {
        "metadata": {"slug": slug, "scan": str(meta.get("model", "unknown")),
                     "transcoder_list": list(meta.get("dictionaries", [])),
                     "prompt_tokens": list(meta.get("token_strings", [])), "prompt": str(meta.get("prompt") or ""),
                     "node_threshold": float(pruning.get("node_threshold", 0.8)), "schema_version": 1},
        "qParams": {"pinnedIds": [to_ct[k] for k in (_json_id(p) for p in ui.get("pins", [])) if k in to_ct],
                    "supernodes": [[s["name"]] + [to_ct[k] for k in (_json_id(n) for n in s["nodes"]) if k in to_ct]
                                   for s in ui.get("supernodes", [])],
                    "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }


def write_circuit_tracer(graph: Graph, path: Path, influence=None) -> Path:
    data = to_circuit_tracer(graph, slug=Path(path).stem, influence=influence)
    return _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data)))
