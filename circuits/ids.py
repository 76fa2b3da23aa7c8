"""One printed form for node and feature ids, accepted everywhere (CLI, files, tooltips, the explorer).

The canonical id is ``<tag><layer>#<index>`` with an optional ``@<pos>``:

==================  ====================  ===========================================================
node kind           canonical id          meaning
==================  ====================  ===========================================================
``mlp_feature``     ``M3#1184@14``        transcoder feature 1184 of layer 3, at token position 14
``attn_feature``    ``A1#33@5``           attention-SAE feature 33 of layer 1, at position 5
``mlp_error``       ``errM3@14``          transcoder L3's error term at position 14
``attn_error``      ``errA1@5``           attention SAE L1's error term at position 5
``token``           ``E#412@2``           the embedding of vocabulary id 412 at position 2
``logit``           ``logit#37@15``       the logit of vocabulary id 37 at position 15
``logit_diff``      ``diff#37@15``        a contrast target whose first token is id 37
==================  ====================  ===========================================================

Without ``@pos`` a feature id names the dictionary feature itself (``M3#1184``: what ``circuits feature`` shows);
with it, one node of a graph. Older spellings stay accepted as input and are read into the same value:
``mlp:3:1184`` / ``attn:1:33`` (kind:layer:index), ``transcoder_L3#1184`` / ``attn_sae_L1:33`` (dictionary name),
``mlp:2:11:517`` and ``mlp_feature:3:14:1184`` (kind:layer:pos:index), ``M3[14]#1184`` (an earlier short form), and
``M3#1184@' to'`` (a position given by its token text, which is ignored: only a number is a position).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from circuits.errors import CircuitsError
from circuits.nodes import Node

TAGS = {"mlp_feature": "M", "attn_feature": "A", "mlp_error": "errM", "attn_error": "errA", "token": "E",
        "logit": "logit", "logit_diff": "diff"}
KIND_OF_TAG = {v: k for k, v in TAGS.items()}
#: the dictionary name of each feature kind's layer (SAELens-style names used by the dashboards and the sets)
DICTIONARY_PREFIX = {"mlp_feature": "transcoder_L", "attn_feature": "attn_sae_L"}
_KIND_WORDS = {"mlp": "mlp_feature", "attn": "attn_feature", "mlp_feature": "mlp_feature",
               "attn_feature": "attn_feature", "mlp_error": "mlp_error", "attn_error": "attn_error",
               "token": "token", "logit": "logit", "logit_diff": "logit_diff"}
EXAMPLES = "M3#1184 (a transcoder feature), A1#33@5 (an attention feature at position 5)"


class NodeIdError(CircuitsError):
    """A node or feature id that cannot be read."""


@dataclass(frozen=True)
class FeatureRef:
    """A dictionary feature, optionally at a position: what a feature id names."""

    kind: str  # "mlp_feature" or "attn_feature"
    layer: int
    index: int
    pos: int | None = None

    @property
    def dictionary(self) -> str:
        """The dictionary's name in a set and in the dashboards database (``transcoder_L3``, ``attn_sae_L1``)."""
        return f"{DICTIONARY_PREFIX[self.kind]}{self.layer}"

    def node(self) -> Node:
        if self.pos is None:
            raise NodeIdError(f"{format_feature(self)} has no position; add one, e.g. {format_feature(self)}@5")
        return Node(self.kind, self.layer, self.pos, self.index)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return format_feature(self)


def format_node(node: Node, with_pos: bool = True) -> str:
    """The canonical id of a graph node (see the module docstring)."""
    tag = TAGS[node.kind]
    body = f"{tag}{node.layer}" if node.kind in DICTIONARY_PREFIX or node.kind.endswith("_error") else tag
    if node.index >= 0 and not node.kind.endswith("_error"):
        body += f"#{node.index}"
    return f"{body}@{node.pos}" if with_pos else body


def format_feature(ref: FeatureRef) -> str:
    body = f"{TAGS[ref.kind]}{ref.layer}#{ref.index}"
    return body if ref.pos is None else f"{body}@{ref.pos}"


_CANON = re.compile(r"(?P<tag>errM|errA|M|A|E|logit|diff)(?P<layer>-?\d+)?(?:#(?P<index>\d+))?"
                    r"(?:@(?P<pos>\d+|'.*'|\".*\"))?")
_SHORT = re.compile(r"(?P<tag>errM|errA|M|A|E|logit|diff)(?P<layer>-?\d+)\[(?P<pos>\d+)\]#(?P<index>-?\d+)")
_DICT = re.compile(r"(?P<prefix>transcoder_L|attn_sae_L)(?P<layer>\d+)[#:](?P<index>\d+)(?:@(?P<pos>\d+))?")


def _int(v: str | None) -> int | None:
    return None if v is None else int(v)


def parse_id(text: str) -> Node | FeatureRef:
    """Read any accepted spelling. A feature without a position is a `FeatureRef`; everything else a `Node`
    (a feature with a position is returned as a `Node` too). Raises `NodeIdError` with the canonical form."""
    t = str(text).strip()
    m = _CANON.fullmatch(t) or _SHORT.fullmatch(t)
    if m:
        kind = KIND_OF_TAG[m["tag"]]
        layer, index = _int(m["layer"]), _int(m["index"])
        pos_s = m["pos"]
        pos = int(pos_s) if pos_s is not None and pos_s.isdigit() else None
        if kind in DICTIONARY_PREFIX and layer is not None and index is not None:
            ref = FeatureRef(kind, layer, index, pos)
            return ref.node() if pos is not None else ref
        if kind.endswith("_error") and layer is not None and index in (None, -1) and pos is not None:
            return Node(kind, layer, pos, -1)  # type: ignore[arg-type]
        if kind in ("token", "logit", "logit_diff") and index is not None and pos is not None:
            default_layer = -1 if kind == "token" else layer
            if default_layer is None:
                raise NodeIdError(f"{t!r}: a logit id needs its layer when read alone; use the graph's id")
            return Node(kind, default_layer, pos, index)  # type: ignore[arg-type]
        if (kind in ("token", "logit", "logit_diff") or kind.endswith("_error")) and pos is None:
            what = {"token": "a token embedding", "logit": "a logit", "logit_diff": "a contrast target"}.get(
                kind, "an error node")
            raise NodeIdError(f"{t!r} names {what} and needs its position (@POS, e.g. {t.split('@')[0]}@3); "
                              f"a feature is written e.g. {EXAMPLES}")
        raise NodeIdError(f"{t!r} is incomplete: write e.g. {EXAMPLES}")
    m = _DICT.fullmatch(t)
    if m:
        kind = "mlp_feature" if m["prefix"] == "transcoder_L" else "attn_feature"
        ref = FeatureRef(kind, int(m["layer"]), int(m["index"]), _int(m["pos"]))
        return ref.node() if ref.pos is not None else ref
    parts = t.split(":")
    if parts and parts[0] in _KIND_WORDS and all(re.fullmatch(r"-?\d+", p) for p in parts[1:]):
        kind, nums = _KIND_WORDS[parts[0]], [int(p) for p in parts[1:]]
        if kind in DICTIONARY_PREFIX and len(nums) == 2:
            return FeatureRef(kind, nums[0], nums[1])
        if len(nums) == 3:
            return Node(kind, nums[0], nums[1], nums[2])  # type: ignore[arg-type]
    raise NodeIdError(f"cannot read the id {t!r}: write e.g. {EXAMPLES}")


def parse_feature(text: str) -> FeatureRef:
    """A feature id (position optional) → `FeatureRef`; any other node id is an error."""
    got = parse_id(text)
    if isinstance(got, Node):
        if got.kind not in DICTIONARY_PREFIX:
            what = {"mlp_error": "an error node", "attn_error": "an error node", "token": "a token node"}.get(
                got.kind, "a logit node")
            raise NodeIdError(f"{text!r} is {what}, not a feature: write e.g. {EXAMPLES}")
        return FeatureRef(got.kind, got.layer, got.index, got.pos)
    return got


def parse_node(text: str) -> Node:
    """A node id with its position → `Node` (features without a position are an error naming the fix)."""
    got = parse_id(text)
    return got.node() if isinstance(got, FeatureRef) else got
