"""Summaries over a study's per-prompt records, for its report: effects and IG by role, the component roll-up,
head traffic, and the aggregated circuit (a `Graph` whose nodes are role nodes and whose edges are means over
prompts)."""

from __future__ import annotations

from collections import defaultdict

import torch

from circuits.graph import FEATURE_KINDS
from circuits.studies.base import OTHER, RoleKey, role_key_str
from circuits.studies.batch import StudySpec


def role_summary(ig: dict, effects: dict, roles) -> list[dict]:
    rows = []
    for role in roles:
        row = {"role": role}
        for kind in ("attn_feature", "mlp_feature", "attn_error", "mlp_error", "token"):
            row[f"{kind}_effect"] = sum(v for k, v in effects.items() if k[0] == kind and k[2] == role)
            row[f"{kind}_ig"] = sum(v for k, v in ig.items() if k[0] == kind and k[2] == role)
        rows.append(row)
    return rows


def component_table(pass1: list[dict]) -> list[dict]:
    acc: dict = defaultdict(lambda: [0.0, 0.0])
    for r in pass1:
        for k, (f, e) in r["components"].items():
            acc[k][0] += f / len(pass1)
            acc[k][1] += e / len(pass1)
    rows = [{"site": k[0], "layer": k[1], "head": k[2], "role": k[3], "features": v[0], "error": v[1],
             "total": v[0] + v[1]} for k, v in acc.items()]
    rows.sort(key=lambda r: (r["site"], r["layer"], r["head"], r["role"]))
    return rows


def head_traffic(pass1: list[dict], top: int = 40) -> list[dict]:
    acc: dict = defaultdict(float)
    for r in pass1:
        for k, v in r["traffic"].items():
            acc[k] += v / len(pass1)
    rows = [{"head": f"L{k[0]}H{k[1]}", "layer": k[0], "h": k[1], "from": k[2], "to": k[3], "effect": v}
            for k, v in acc.items()]
    rows.sort(key=lambda r: (-abs(r["effect"]), r["head"], r["from"], r["to"]))
    return rows[:top]


def aggregated_graph(study, spec: StudySpec, pass2: list[dict], pass1: list[dict], circuit: list[RoleKey],
                     ig: dict, rm):
    """A `Graph` over role nodes: position = role index (token_strings = role names), edges = mean over prompts of
    the summed edges between the role nodes, activations = fraction of prompts on which the node is active."""
    from circuits.graph import Graph, Node

    roles = list(study.all_roles)
    n_layers = rm.n_layers
    edges: dict = defaultdict(float)
    for r in pass2:
        for k, v in r["edges"].items():
            edges[k] += v / len(pass2)
    presence: dict = defaultdict(int)
    for r in pass1:
        for k in r["effects"]:
            presence[k] += 1
    keys = set(circuit)
    for s, t in edges:
        keys.add(s)
        keys.add(t)
    keys = [k for k in keys if k[0] not in FEATURE_KINDS or k in set(circuit)]

    def node_of(k: RoleKey) -> Node:
        kind, layer, role, index = k
        pos = roles.index(role) if role in roles else roles.index(OTHER)
        if kind in ("logit", "logit_diff"):
            return Node(kind, n_layers, pos, 0)
        return Node(kind, layer, pos, index)

    nodes = sorted({node_of(k): k for k in keys}.items(), key=lambda kv: (kv[0].order, kv[0].pos, kv[0].index))
    row = {k: i for i, (_, k) in enumerate(nodes)}
    pairs = sorted(((row[s], row[t], w) for (s, t), w in edges.items() if s in row and t in row and w != 0))
    edge_index = torch.tensor([[t for _, t, _ in pairs], [s for s, _, _ in pairs]], dtype=torch.long).reshape(2, -1)
    weight = torch.tensor([w for _, _, w in pairs], dtype=torch.float64)
    acts = torch.tensor([presence[k] / len(pass1) if k[0] not in ("logit", "logit_diff") else 1.0
                         for _, k in nodes], dtype=torch.float64)
    target = torch.tensor([1.0 if k[0] in ("logit", "logit_diff") else 0.0 for _, k in nodes], dtype=torch.float64)
    meta = {
        "model": spec.model, "aggregated": True, "study": spec.study, "n_prompts": len(pass2),
        "dictionaries": sorted(d.cfg.name for d in rm.dictionaries), "method": "aggregated",
        "n_heads": rm.cfg.n_heads,
        "token_strings": roles, "tokens": list(range(len(roles))), "bos_pos": None, "n_layers": n_layers,
        "prompt": f"{study.title}: {len(pass2)} prompts aggregated by role",
        "targets": [{"label": f"{study.answer_label} − {study.wrong_label}", "node": n.to_json(), "weight": 1.0,
                     "value": 0.0, "probability": None} for n, k in nodes if k[0] in ("logit", "logit_diff")],
        "note": "position = role (see token_strings); activation = fraction of prompts where the node is active; "
                "edge = mean over prompts of the summed edges between the role nodes; "
                "ig = mean integrated-gradient score under mean ablation",
        "ig": {role_key_str(k): ig.get(k, 0.0) for _, k in nodes if k[0] in FEATURE_KINDS},
    }
    return Graph(nodes=tuple(n for n, _ in nodes), activations=acts, edge_index=edge_index, edge_weight=weight,
                 metadata=meta, target_weights=target)
