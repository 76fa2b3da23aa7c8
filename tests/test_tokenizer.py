"""The word-level tokenizer: round trips, separate punctuation, kept case, two-digit numbers, offline folder."""

from __future__ import annotations

import pytest

from circuits.organism.corpus import ToyWorldCorpus
from circuits.organism.tokenizer import BOS, UNK, build_tokenizer, load_tokenizer, save_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_round_trip_on_corpus_text(tok):
    corpus = ToyWorldCorpus(0)
    for i in range(50):
        text = corpus.row_text(i, 128)
        enc = tok.encode(text)
        assert tok.token_to_id(UNK) not in enc.ids, "corpus text must be fully in-vocabulary"
        assert tok.decode(enc.ids) == " " + text


def test_punctuation_case_and_years(tok):
    enc = tok.encode("When Mary and John went to the store, John gave a drink to Mary.")
    assert enc.tokens[:3] == [" When", " Mary", " and"]
    assert "," in enc.tokens and enc.tokens[-1] == "."
    assert tok.token_to_id(" The") != tok.token_to_id(" the")
    assert tok.encode("from the year 1732 to the year 17").tokens[-5:] == ["32", " to", " the", " year", " 17"]
    assert tok.encode("zzzz").tokens == [UNK]


def test_saved_folder_loads_offline_with_transformers(tmp_path, no_network, tok):
    folder = save_tokenizer(tmp_path / "tok")
    hf = load_tokenizer(folder)
    assert len(hf) == tok.get_vocab_size()
    assert hf.bos_token == BOS
    text = "Lyon is a city in France."
    assert hf(text)["input_ids"] == tok.encode(text).ids
    assert hf.decode(hf(text)["input_ids"]) == " " + text
