"""Graph files: our lossless JSON (with a JSON Schema), DOT for Graphviz, GraphML, and circuit-tracer JSON.

* **Our JSON** (`circuits/schemas/graph.schema.json`, ``schema_version`` 4; versions 2 and 3 are still read)
  stores the node table and the edges as parallel arrays (compact enough for full graphs with millions of edges),
  per-head parts only for edges into attention features, metadata (model, dictionaries, tokens, targets, method,
  pruning thresholds, scores; since version 3 optionally ``qk``, the QK tables of `trace --qk`; since version 4
  ``bos_folded``), the UI state (pins, supernodes — manual and automatic —, labels) and, since version 4, the
  BOS part of each constant (``nodes.bos_constant``, when BOS nodes were folded) and the top paths (``paths``). `read_json` validates against the schema and then checks the arrays agree (same lengths,
  edge ends inside the node table), naming the offending field. Graph → JSON → graph is exact.
* **DOT**: one rank per sublayer (tokens at the bottom, then attention L / MLP L, logits on top), nodes ordered
  by position left to right, fill colour by kind, edges blue (positive) or red (negative) with width ∝ |weight|.
  Only the strongest `DOT_MAX_EDGES` edges are drawn (Graphviz cannot lay out tens of thousands); the caption says
  how many were left out.
* **GraphML** through networkx, every node and edge attribute included (per-head parts as a JSON string).
* **circuit-tracer / Neuronpedia JSON** (their field names and types). That format has no attention features:
  they are exported with ``feature_type = "attention sae"`` and node ids ``"A{layer}_{feature}_{pos}"``; their
  errors with ``feature_type = "attention reconstruction error"`` and ids ``"A0_{layer}_{pos}"``. Its frontend
  keys a node by ``{layer}_{feature}_{ctx_idx}``, so an attention node's ``feature`` field is shifted out of the
  transcoders' range: ``CT_ATTN_FEATURE_OFFSET + index`` for attention features, ``-2`` for attention errors
  (``-1`` for MLP errors) — the node id keeps the plain index; a contrast
  target is a logit node whose ``clerp`` names both tokens. Our JSON stays the lossless format.

All writers write to a temporary file and rename it, so an existing file is never left half-written.

Modules: `graph_json` (our JSON), `dot` (labels and DOT), `graphml`, `circuit_tracer`, `diff`; every name is
imported here, so ``from circuits.export import read_json`` works as before.
"""

from circuits.export.circuit_tracer import (
                                 CT_ATTN_FEATURE_OFFSET,
                                 CT_FEATURE_TYPES,
                                 to_circuit_tracer,
                                 write_circuit_tracer,
)
from circuits.export.diff import GraphDiff, diff
from circuits.export.dot import DOT_MAX_EDGES, FILL, node_label, render, render_source, target_label, to_dot, write_dot
from circuits.export.graph_json import (
                                 FORMAT,
                                 READABLE_VERSIONS,
                                 SCHEMA_PATH,
                                 SCHEMA_VERSION,
                                 GraphFileError,
                                 _atomic_write,
                                 from_dict,
                                 loads,
                                 node_id,
                                 read_json,
                                 to_dict,
                                 validate,
                                 write_json,
)
from circuits.export.graphml import write_graphml

__all__ = ["CT_ATTN_FEATURE_OFFSET", "CT_FEATURE_TYPES", "DOT_MAX_EDGES", "FILL", "FORMAT", "READABLE_VERSIONS",
           "SCHEMA_PATH", "SCHEMA_VERSION", "GraphDiff", "GraphFileError", "_atomic_write", "diff", "from_dict",
           "loads", "node_id", "node_label", "read_json", "render", "render_source", "target_label", "to_circuit_tracer",
           "to_dict", "to_dot", "validate", "write_circuit_tracer", "write_dot", "write_graphml", "write_json"]
