"""Bad input through the Python API: a typed exception with one clear message, before any work is done."""

from __future__ import annotations

import warnings

import pytest
import torch

from circuits import CircuitsError, ModelLoadError
from circuits.graph import Node


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), "two"])
def test_an_edit_with_a_value_that_is_not_a_finite_number_is_refused(value):
    """`Edit(node, "set", nan)` used to be accepted, and every logit became NaN."""
    from circuits import Edit

    with pytest.raises(CircuitsError, match="M3#7@2"):
        Edit(Node("mlp_feature", 3, 2, 7), "set", value)
    with pytest.raises(CircuitsError, match="mode 'double'"):
        Edit(Node("mlp_feature", 3, 2, 7), "double", 1.0)  # type: ignore[arg-type]
    assert Edit(Node("mlp_feature", 3, 2, 7), "set", 2).value == 2


def test_an_empty_model_name_is_not_the_current_folder(tmp_path, monkeypatch):
    from circuits import load_model

    monkeypatch.chdir(tmp_path)
    for name in ("", "  "):
        with pytest.raises(ModelLoadError, match="empty model name"):
            load_model(name)


def test_a_dictionary_that_does_not_fit_the_model_names_its_folder(tmp_path, tiny_model):
    from circuits import load_dictionaries
    from circuits.dictionaries import DictionaryLoadError
    from circuits.dictionaries.base import DictionaryConfig, make_dictionary
    from circuits.dictionaries.dictset import DictionarySet

    wrong = DictionaryConfig("transcoder", 0, tiny_model.cfg.d_model * 2, 16, tiny_model.cfg.d_model * 2,
                             activation="relu", model_name="tiny")
    folder = tmp_path / "my_set"
    DictionarySet("tiny", {"transcoder_L0": make_dictionary(wrong)}).save(folder)
    with pytest.raises(DictionaryLoadError, match=f"transcoder_L0 \\(in {folder}\\)"):
        load_dictionaries(str(folder), tiny_model)


def test_a_graph_repr_is_one_short_line():
    from circuits.graph import Graph

    n = 3000
    nodes = tuple(Node("mlp_feature", 0, p, 0) for p in range(n))
    g = Graph(nodes, torch.ones(n), torch.stack([torch.arange(1, n), torch.arange(n - 1)]), torch.ones(n - 1),
              metadata={"targets": [{"label": "' Mary' − ' John'", "value": 3.25, "node": ["logit_diff", 1, 5, 1]}],
                        "scores": {"replacement": 0.5, "completeness": 0.75}})
    text = repr(g)
    assert "\n" not in text and len(text) < 300, text
    assert "3000 nodes (3000 mlp_feature)" in text and "2999 edges" in text and "3.250" in text
    assert "replacement 0.500" in text


def test_a_literal_special_token_in_a_prompt_is_said(tiny_model):
    """`<|endoftext|>` typed in a prompt became the BOS token without a word."""
    from circuits.replacement import ReplacementModel

    rm = ReplacementModel(tiny_model, [], name="tiny")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokens = rm.tokenize("When Mary<|endoftext|> and John")
    assert any("'<|endoftext|>'" in str(w.message) for w in caught)
    assert int((tokens == tiny_model.tokenizer.bos_token_id).sum()) == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rm.tokenize("When Mary and John")
    assert not any("endoftext" in str(w.message) for w in caught)


def test_unknown_words_are_named_and_a_long_list_is_cut(tiny_model):
    """The unknown-word warning names the words and their positions (the first 8, then how many more); a prompt of
    known words (the negative control) gives none."""
    from circuits.replacement import ReplacementModel

    rm = ReplacementModel(tiny_model, [], name="tiny")

    def said(prompt):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rm.tokenize(prompt)
        return [str(w.message) for w in caught if "unknown words" in str(w.message)]

    assert said("When Mary and John") == []
    (one,) = said("When Mary zzqx and John")
    assert "'zzqx' at 3" in one and "replace them with words it knows" in one
    (many,) = said(" ".join(["zzqx"] * 20))
    assert "'zzqx' at 8" in many and "'zzqx' at 9" not in many and "and 12 more" in many


def test_invalid_unicode_in_a_prompt_is_named(tiny_model):
    from circuits.errors import AttributionError
    from circuits.replacement import ReplacementModel

    rm = ReplacementModel(tiny_model, [], name="tiny")
    with pytest.raises(AttributionError, match="byte 0xff at character 5"):
        rm.tokenize("When \udcff Mary")


def test_a_loaded_graph_that_does_not_fit_the_dictionaries_is_named():
    """`check_graph_fits` names the first node a replacement model cannot hold: a feature index past its dictionary,
    a position past the prompt; the shipped graph itself (the negative control) fits."""
    import dataclasses

    from circuits import ReplacementModel, export, load_dictionaries, load_model
    from circuits.interventions import check_graph_fits
    from circuits.model import DATA_DIR

    model, _ = load_model("organism")
    rm = ReplacementModel(model, load_dictionaries("organism", model))
    graph = export.read_json(DATA_DIR / "graphs" / "ioi_abba.json")
    check_graph_fits(rm, graph)
    k = next(i for i, n in enumerate(graph.nodes) if n.kind == "attn_feature")
    for change, needle in (({"index": 10**6}, "has features 0..4095"), ({"pos": 99}, "position 99")):
        nodes = list(graph.nodes)
        nodes[k] = dataclasses.replace(nodes[k], **change)
        with pytest.raises(CircuitsError, match=needle):
            check_graph_fits(rm, dataclasses.replace(graph, nodes=nodes), "g.json")



def test_a_target_of_two_known_words_says_it_splits_not_that_it_is_unknown():
    """`Contrast(" Mary John", ...)` said the words were not in the vocabulary ('<|unk|>', '<|unk|>', ' John'):
    the leading space was tokenized raw. The message now reads the best spelling."""
    from circuits.attribution.targets import resolve_token
    from circuits.cli.trace_checks import organism_vocab
    from circuits.errors import AttributionError

    v = organism_vocab("organism")
    with pytest.raises(AttributionError, match=r"not a single token \(it splits into \[' Mary', ' John'\]\)"):
        resolve_token(" Mary John", v.encode, v.pieces, v.unk)
    with pytest.raises(AttributionError, match=r"' Mry' is not in the model's vocabulary.*reads as \['<\|unk\|>'\]"):
        resolve_token(" Mry", v.encode, v.pieces, v.unk)
    assert resolve_token(" Mary", v.encode, v.pieces, v.unk) == resolve_token("Mary", v.encode, v.pieces, v.unk)


PROMPT = "When Mary and John went to the store, John gave a drink to"


def test_nodes_edits_and_graphs_of_another_prompt_or_place_are_refused(rm64):
    """Found by probing the API: these ran silently on the wrong thing (a token or error edit at position -1 edited
    the last position; an error node of layer 9 changed nothing; a graph of another prompt was scored; a cache of
    another prompt was attributed under this prompt's name) or failed deep inside torch."""
    from circuits import Contrast, Edit, attribute, intervene, prune
    from circuits.interventions import Ablation, faithfulness, logit_diff_metric

    cache = rm64.run(PROMPT)
    n = cache.n_pos
    tok = int(cache.tokens[3])
    metric = logit_diff_metric(rm64.model, " Mary", " John")
    for node, says in ((Node("mlp_error", 1, -1, -1), "position -1 is outside the prompt"),
                       (Node("attn_error", 0, n, -1), f"position {n} is outside the prompt"),
                       (Node("token", -1, -1, tok), "position -1 is outside the prompt"),
                       (Node("token", -1, 3, tok + 1), "the node is of another prompt"),
                       (Node("mlp_error", 9, 3, -1), "layer 9 is outside the model"),
                       (Node("mlp_feature", 0, 3, -4), "feature -4 is outside transcoder_L0"),
                       (Node("mlp_feature", 0, n, 1), f"position {n} is outside the prompt")):
        with pytest.raises(CircuitsError, match=says):
            intervene(rm64, cache, [Edit.zero(node)], metric=metric)
    assert intervene(rm64, cache, [Edit.zero(Node("token", -1, 3, tok))], metric=metric).metric != \
        pytest.approx(float(metric(cache.logits)))  # the right token node still edits
    with pytest.raises(CircuitsError, match="not a Node"):
        Edit("M0#5@3", "set", 0.0)  # type: ignore[arg-type]
    with pytest.raises(CircuitsError, match="is text"):
        Edit(Node("mlp_feature", 0, 3, 5), "set", "1")  # type: ignore[arg-type]

    other = "When John and Mary went to the store, Mary gave a drink to"  # as many tokens, another prompt
    graph = prune(attribute(rm64, other, Contrast(" John", " Mary"))).graph
    with pytest.raises(CircuitsError, match="attributed on another prompt"):
        faithfulness(rm64, cache, graph, metric, Ablation("zero"))
    own = prune(attribute(rm64, PROMPT, Contrast(" Mary", " John"), cache=cache)).graph
    assert 0 < faithfulness(rm64, cache, own, metric, Ablation("zero")).n_features  # its own prompt still scores
    with pytest.raises(CircuitsError, match="outside the prompt"):
        faithfulness(rm64, rm64.run("Mary went to"), list(own.nodes), metric)
    with pytest.raises(CircuitsError, match="cache is of another prompt"):
        attribute(rm64, PROMPT, Contrast(" Mary", " John"), cache=rm64.run(other))


@pytest.mark.parametrize("prompt, says", [
    (None, "the prompt is a NoneType"),
    ([], "the prompt is empty"),
    (torch.tensor([[1, 2, 3], [1, 2, 3]]), "shape \\(2, 3\\)"),
    (torch.tensor([1.0, 2.7]), "give integer ids"),
    (torch.tensor([1, 99999]), "token id 99999 is outside the vocabulary"),
    (["a", "b"], "not a sequence of token ids"),
])
def test_a_prompt_that_is_not_one_sequence_of_token_ids_is_refused(rm64, prompt, says):
    """A batch of two was flattened into one prompt with BOS in the middle, floats were truncated, an int ran as a
    one-token prompt, an id past the vocabulary failed inside TransformerLens."""
    with pytest.raises(CircuitsError, match=says):
        rm64.run(prompt)


def test_token_ids_come_in_any_integer_container(rm64):
    """A batch of one (`model.to_tokens`), a list, a NumPy array, a range and one id (an int or a 0-d tensor) are
    each one prompt."""
    import numpy as np

    tokens = rm64.model.to_tokens(PROMPT)
    assert tokens.dim() == 2 and torch.equal(rm64.run(tokens).tokens, rm64.run(PROMPT).tokens)
    ids = tokens[0].tolist()
    for given in (ids, np.array(ids), tuple(ids)):
        assert rm64.run(given).tokens.tolist() == ids
    assert rm64.run(range(3, 6)).tokens.tolist() == [3, 4, 5]
    assert rm64.run(5).tokens.tolist() == rm64.run(torch.tensor(5)).tokens.tolist() == [5]


def test_a_logit_target_with_meaningless_tokens_or_weights_is_refused(rm64):
    """NaN weights gave NaN scores and a weight of −1 a replacement score of 2.7e14; a string for `tokens` was read
    letter by letter; a bool ran as token id 1."""
    from circuits import Contrast, Logit, attribute

    for target, says in ((Logit(" Mary"), "give a tuple of tokens"),  # type: ignore[arg-type]
                         (Logit((" Mary",), (float("nan"),)), "weight nan is not a finite number"),
                         (Logit((" Mary", " John"), (1.0, -1.0)), "use Contrast"),
                         (Logit(3), "give a tuple of tokens"),  # type: ignore[arg-type]
                         (Contrast(True, 3), "is a bool"),
                         (Contrast(1.5, 3), "is a float")):  # type: ignore[arg-type]
        with pytest.raises(CircuitsError, match=says):
            attribute(rm64, PROMPT, target)
    import numpy as np

    from circuits.export.graph_json import to_dict

    mary = rm64.model.to_tokens(" Mary", prepend_bos=False)[0, 0]  # a 0-d tensor, then a NumPy integer
    graph = attribute(rm64, PROMPT, Logit((mary, " John"), (np.float32(0.7), torch.tensor(0.3))))
    assert graph.n_nodes > 0 and attribute(rm64, PROMPT, Contrast(np.int64(mary), " John")).n_nodes > 0
    assert to_dict(graph)["metadata"]["target"]["tokens"] == [int(mary), " John"]  # plain ints: JSON can hold it


def test_the_usual_slips_with_the_api_get_a_message_not_a_traceback(rm64, tmp_path, monkeypatch):
    """`ReplacementModel(load_model(...), ...)` (the pair, not the model) is accepted; a string model or missing
    dictionaries, prune's result passed where a graph goes, one Edit without a list, and a graph written into a
    missing folder (refused before serialising) are each one message instead of AttributeError / TypeError deep
    inside."""
    from circuits import Contrast, Edit, ReplacementModel, attribute, graph_scores, intervene, load_dictionaries, prune
    from circuits.export.graph_json import write_json
    from circuits.model import LoadedModel

    pair = LoadedModel(rm64.model, None)
    assert ReplacementModel(pair, rm64.dictionaries).model is rm64.model
    for model, dicts, says in ((pair.model, None, "give a loaded set"), ("organism", rm64.dictionaries,
                                                                          "not a TransformerLens")):
        with pytest.raises(CircuitsError, match=says):
            ReplacementModel(model, dicts)
    with pytest.raises(CircuitsError, match="no dictionary set or folder"):
        load_dictionaries(str(tmp_path / "nope"), pair)
    graph = attribute(rm64, PROMPT, Contrast(" Mary", " John"))
    result = prune(graph)
    for call in (lambda: prune(result), lambda: graph_scores(result)):
        with pytest.raises(CircuitsError, match="pass result.graph"):
            call()
    node = next(n for n in result.graph.nodes if n.kind == "mlp_feature")
    alone, listed = intervene(rm64, PROMPT, Edit.zero(node)), intervene(rm64, PROMPT, [Edit.zero(node)])
    assert torch.equal(alone.logits, listed.logits) and not torch.equal(alone.logits, alone.clean_logits)
    with pytest.raises(CircuitsError, match="takes Edits, not a Node"):
        intervene(rm64, PROMPT, [node])
    import circuits.export.graph_json as gj

    monkeypatch.setattr(gj, "to_dict", lambda g: pytest.fail("serialised before the folder was checked"))
    with pytest.raises(CircuitsError, match="does not exist"):
        write_json(graph, tmp_path / "missing" / "g.json")
    with pytest.raises(CircuitsError, match="is a folder"):
        write_json(graph, tmp_path)


def test_feature_targets_and_prune_options_are_checked_where_they_are_given(rm64):
    """`FeatureTarget("M0#59@14")` failed later with AttributeError, and an error node as a target was reported as
    "not active"; `prune(g, ranked=rank_nodes(other))` raised IndexError, `node_threshold="0.8"` a TypeError."""
    from circuits import Contrast, FeatureTarget, attribute, prune
    from circuits.pruning import rank_nodes

    with pytest.raises(CircuitsError, match="not a Node"):
        FeatureTarget("M0#59@14")  # type: ignore[arg-type]
    with pytest.raises(CircuitsError, match="must be a feature"):
        FeatureTarget(Node("mlp_error", 0, 3, -1))
    graph = attribute(rm64, PROMPT, Contrast(" Mary", " John"))
    small = prune(graph).graph
    with pytest.raises(CircuitsError, match="ranked is of a graph of"):
        prune(graph, ranked=rank_nodes(small))
    for kwargs, says in (({"node_threshold": "0.8"}, "node_threshold must be a number"),
                         ({"max_feature_nodes": 2.5}, "max_feature_nodes must be a non-negative integer")):
        with pytest.raises(CircuitsError, match=says):
            prune(graph, **kwargs)
    assert prune(graph, ranked=rank_nodes(graph)).graph.n_nodes == small.n_nodes
    import numpy as np

    assert prune(graph, np.float32(0.8), torch.tensor(0.98)).graph.n_nodes == small.n_nodes  # any real number
    assert prune(graph, max_feature_nodes=np.int64(3)).graph.n_nodes <= small.n_nodes
