"""One canonical node/feature id: printed the same everywhere, read back exactly, old spellings accepted."""

from __future__ import annotations

import pytest

from circuits.graph import Node
from circuits.ids import FeatureRef, NodeIdError, format_node, parse_feature, parse_id, parse_node

NODES = [Node("mlp_feature", 3, 14, 1184), Node("attn_feature", 1, 5, 33), Node("mlp_error", 3, 14, -1),
         Node("attn_error", 0, 2, -1), Node("token", -1, 2, 412)]


@pytest.mark.parametrize("node", NODES, ids=str)
def test_canonical_id_reads_back_to_the_same_node(node):
    text = format_node(node)
    assert parse_node(text) == node
    assert node.short() == text  # Node.short is the canonical id too


def test_canonical_forms_are_the_documented_ones():
    assert [format_node(n) for n in NODES] == ["M3#1184@14", "A1#33@5", "errM3@14", "errA0@2", "E#412@2"]
    assert str(parse_feature("M3#1184")) == "M3#1184" and parse_feature("M3#1184").dictionary == "transcoder_L3"
    assert parse_feature("A1#33").dictionary == "attn_sae_L1"


@pytest.mark.parametrize("old,want", [
    ("mlp:3:1184", FeatureRef("mlp_feature", 3, 1184)),
    ("attn:1:33", FeatureRef("attn_feature", 1, 33)),
    ("transcoder_L3#1184", FeatureRef("mlp_feature", 3, 1184)),
    ("attn_sae_L1:33", FeatureRef("attn_feature", 1, 33)),
    ("M3#1184@' to'", FeatureRef("mlp_feature", 3, 1184)),  # the position given as token text is not a position
    ("mlp:2:11:517", Node("mlp_feature", 2, 11, 517)),
    ("mlp_feature:3:14:1184", Node("mlp_feature", 3, 14, 1184)),
    ("M3[14]#1184", Node("mlp_feature", 3, 14, 1184)),
])
def test_old_spellings_are_accepted(old, want):
    assert parse_id(old) == want


@pytest.mark.parametrize("bad", ["banana", "M3", "errM3", "mlp:1", "M3#x", ""])
def test_unreadable_ids_name_the_canonical_form(bad):
    with pytest.raises(NodeIdError, match="M3#1184"):
        parse_id(bad)


def test_a_feature_id_refuses_other_node_kinds_and_a_node_needs_a_position():
    with pytest.raises(NodeIdError, match="error node, not a feature"):
        parse_feature("errM3@14")
    with pytest.raises(NodeIdError, match="no position"):
        parse_node("M3#1184")


def test_graph_files_key_labels_by_the_canonical_id_and_convert_old_keys():
    """A file written before the canonical id keyed UI labels by kind:layer:pos:index; they still apply."""
    import torch

    from circuits import export
    from circuits.graph import Graph

    nodes = (Node("token", -1, 0, 7), Node("mlp_feature", 0, 0, 5))
    g = Graph(nodes, torch.ones(2), torch.tensor([[1], [0]]), torch.tensor([0.5]),
              metadata={"model": "x", "dictionaries": [], "tokens": [7], "token_strings": [" a"], "targets": [],
                        "method": "analytic", "n_layers": 1, "n_heads": 1,
                        "ui": {"labels": {"mlp_feature:0:0:5": "old-style key"}}})
    data = export.to_dict(g)
    back = export.from_dict(data)
    assert back.metadata["ui"]["labels"] == {"M0#5@0": "old-style key"}
    assert export.node_label(back, nodes[1]) == "old-style key"
    assert export.to_dict(back)["ui"]["labels"] == {"M0#5@0": "old-style key"}
    assert "M0#5@0" in export.to_dot(back)  # the SVG tooltip shows the canonical id


def test_a_node_id_without_its_position_says_what_it_names():
    """`E#279` was called "incomplete"; it is a token embedding missing its position."""
    from circuits.ids import NodeIdError, parse_id

    with pytest.raises(NodeIdError, match=r"'E#279' names a token embedding and needs its position .*E#279@3"):
        parse_id("E#279")
    with pytest.raises(NodeIdError, match="names an error node"):
        parse_id("errM3")
    with pytest.raises(NodeIdError, match="is incomplete"):
        parse_id("M3")
    with pytest.raises(NodeIdError, match="is incomplete"):  # it has a position: what it lacks is the index
        parse_id("E@3")
