"""The toy-world corpus: determinism, family coverage and held-out disjointness."""

from __future__ import annotations

import re

import pytest

from circuits.organism import corpus as C
from circuits.organism import templates as T
from circuits.organism import world as W

N_SENTENCES = 20000


@pytest.fixture(scope="module")
def train_sentences():
    corpus = C.ToyWorldCorpus(0)
    rng = corpus.rng("test", 0)
    out = {fam: [corpus.sentence(rng, fam) for _ in range(N_SENTENCES // len(C.FAMILY_WEIGHTS))]
           for fam in C.FAMILY_WEIGHTS}
    out["ioi"] += [corpus._phase2_ioi(rng) for _ in range(N_SENTENCES // len(C.FAMILY_WEIGHTS))]  # compositional
    out["ioi"] += [corpus._phase3_ioi(rng) for _ in range(N_SENTENCES // len(C.FAMILY_WEIGHTS))]  # grammar
    out["ioi"] += [corpus._phase4_ioi(rng) for _ in range(N_SENTENCES // len(C.FAMILY_WEIGHTS))]  # slot-noised
    out["callback"] = [corpus._train_callback(rng) for _ in range(N_SENTENCES // len(C.FAMILY_WEIGHTS))]
    return out


def test_same_seed_same_text_and_different_seed_differs():
    a, b, c = C.ToyWorldCorpus(7), C.ToyWorldCorpus(7), C.ToyWorldCorpus(8)
    rows_a = [a.row_text(i, 128) for i in range(20)]
    assert rows_a == [b.row_text(i, 128) for i in range(20)]
    assert rows_a != [c.row_text(i, 128) for i in range(20)]
    assert a.row_text(0, 128, "heldout") != rows_a[0]


def test_phase_two_starts_at_the_configured_row_and_only_for_training():
    corpus = C.ToyWorldCorpus(0, phase2_start_row=10, phase3_start_row=20)
    assert corpus.phase(9, "train") == 1 and corpus.phase(10, "train") == 2 and corpus.phase(20, "train") == 3
    assert corpus.phase(0, "heldout") == 3
    # phase 1 rows do not depend on where phase 2 starts
    assert corpus.row_text(5, 128) == C.ToyWorldCorpus(0).row_text(5, 128)
    assert len(C.IOI_INTROS) * len(C.IOI_ACTIONS) >= 100
    assert len(C.IOI_FRAMES) * len(C.IOI_VERB_PHRASES) * len(C.IOI_PHASE3_ACTIONS) >= 1000


def test_phase_four_starts_at_its_row_and_keeps_earlier_rows():
    corpus = C.ToyWorldCorpus(0, phase2_start_row=10, phase3_start_row=20, phase4_start_row=30)
    assert corpus.phase(29, "train") == 3 and corpus.phase(30, "train") == 4 and corpus.phase(30, "heldout") == 3
    later = C.ToyWorldCorpus(0, phase2_start_row=10, phase3_start_row=20, phase4_start_row=40)
    assert [corpus.row_text(i, 128) for i in range(30)] == [later.row_text(i, 128) for i in range(30)]
    assert corpus.row_text(35, 128) != later.row_text(35, 128)


def test_slot_noised_ioi_keeps_the_task_and_varies_the_words():
    corpus = C.ToyWorldCorpus(0)
    rng = corpus.rng("test-noise", 0)
    sentences = [corpus._phase4_ioi(rng) for _ in range(2000)]
    openings = set()
    for s in sentences:
        names = _ioi_names(s)
        answer = names[-1]
        assert len(names) == 4 and len(set(names)) == 2, s  # A, B, S, answer: one name twice, the answer once
        assert names[:3].count(answer) == 1 and s.endswith(f" {answer}."), s
        assert names[0] != names[1] and names[2] in names[:2] and names[2] != answer, s
        openings.add(s.split(" ")[0])
    assert len(openings) > 100  # the opening word is no cue
    lower, upper = C.noise_words()
    assert not (set(lower) | set(upper)) & (set(W.NAMES) | {"to"} | T.heldout_only_words())


def test_world_sizes_meet_the_spec():
    assert len(C.IOI_TRAIN_TEMPLATES) >= 15 and len(C.IOI_HELDOUT_TEMPLATES) >= 3
    assert len(set(W.NAMES)) >= 100 and set(W.MALE_NAMES).isdisjoint(W.FEMALE_NAMES)
    assert len(W.PLACES) >= 10 and len(W.OBJECTS) >= 10
    assert set(W.IOI_HELDOUT_NAMES).isdisjoint(W.IOI_TRAIN_NAMES)


def test_every_family_occurs_in_the_mixed_stream():
    corpus = C.ToyWorldCorpus(0)
    text = " ".join(corpus.row_text(i, 128) for i in range(300))
    assert " gave a " in text and "lasted from the year" in text and "is a city in" in text
    assert "The capital of the country containing" in text and " because " in text
    assert re.search(r"Monday, Tuesday|January, February|one, two", text)


def _ioi_names(sentence: str) -> tuple[str, ...]:
    return tuple(w for w in re.findall(r"[A-Za-z]+", sentence) if w in W.NAMES)


def test_ioi_training_before_phase_five_never_uses_heldout_names_or_templates(train_sentences):
    heldout = set(W.IOI_HELDOUT_NAMES)
    for s in train_sentences["ioi"]:
        assert heldout.isdisjoint(_ioi_names(s)), s
        for marker in ("spent the day", "reached the", "left the", "mailed", "tossed", "returned"):
            assert marker not in s, s
    for t in C.IOI_HELDOUT_TEMPLATES:
        assert any(m in t for m in ("spent the day", "reached the", "left the"))


def test_phase_five_ioi_uses_every_name_but_never_a_heldout_pair():
    corpus = C.ToyWorldCorpus(0, phase2_start_row=10, phase3_start_row=20, phase4_start_row=30, phase5_start_row=40)
    assert corpus.phase(39, "train") == 4 and corpus.phase(40, "train") == 5 and corpus.phase(40, "heldout") == 3
    later = C.ToyWorldCorpus(0, phase2_start_row=10, phase3_start_row=20, phase4_start_row=30, phase5_start_row=50)
    assert [corpus.row_text(i, 128) for i in range(40)] == [later.row_text(i, 128) for i in range(40)]
    rng = corpus.rng("test-phase5", 0)
    seen: set[str] = set()
    heldout = set(W.IOI_HELDOUT_NAMES)
    for _ in range(6000):
        s = corpus._phase5_ioi(rng)
        names = _ioi_names(s)
        assert len(set(names)) == 2 and not set(names) <= heldout, s  # never two held-out names together
        assert not any(m in s for m in ("spent the day", "reached the", "mailed", "tossed")), s
        seen.update(names)
    assert heldout <= seen  # every held-out name gets an IOI role, always beside a training name


def test_heldout_names_and_template_words_still_occur_elsewhere(train_sentences):
    other = " ".join(s for fam, ss in train_sentences.items() if fam != "ioi" for s in ss)
    for name in W.IOI_HELDOUT_NAMES:
        assert re.search(rf"\b{name}\b", other), name
    for word in ("mailed", "tossed", "returned", "reached", "spent", "left", "Once", "As"):
        assert re.search(rf"\b{word}\b", other), word


def test_ioi_eval_prompts_are_unseen_pairs_in_both_orders():
    corpus = C.ToyWorldCorpus(0)
    for order in ("ABBA", "BABA"):
        for p in corpus.ioi_prompts(50, order):
            assert p.io in W.IOI_HELDOUT_NAMES and p.s in W.IOI_HELDOUT_NAMES and p.io != p.s
            first, second = _ioi_names(p.text)[:2]
            assert (first, second) == ((p.io, p.s) if order == "ABBA" else (p.s, p.io))
            assert _ioi_names(p.text).count(p.s) == 2 and _ioi_names(p.text).count(p.io) == 1


def test_two_hop_and_greater_than_heldout_never_in_training(train_sentences):
    for s in train_sentences["two_hop"]:
        city = s.split("containing ")[1].split(" ")[0]
        assert city in W.TWO_HOP_TRAIN_CITIES
    one_hop_cities = {w for s in train_sentences["facts"] for w in re.findall(r"[A-Za-z]+", s)}
    assert set(W.TWO_HOP_HELDOUT_CITIES) <= one_hop_cities
    for s in train_sentences["greater_than"]:
        century, start = re.search(r"year (\d\d)(\d\d) to", s).groups()
        end = int(re.search(r"to the year \d\d(\d\d)", s).group(1))
        assert not C.greater_than_heldout(century, int(start)) and end > int(start)
    assert all(C.greater_than_heldout(p.century, p.start) for p in C.ToyWorldCorpus(0).greater_than_prompts())


def test_successor_and_pronoun_heldout_carriers_unused(train_sentences):
    assert not any("In order," in s for s in train_sentences["successor"])
    assert all("stayed at the" in t or "opened the" in t for t in C.PRONOUN_HELDOUT_TEMPLATES)
    assert not any("stayed at the" in s or "opened the" in s for s in train_sentences["pronoun"])


def test_ioi_prompts_with_other_templates_keep_the_random_stream():
    """`templates` replaces the template list but not the draws: with one template of the same placeholders, the
    names, order and slot fillers are those of the default held-out stream, and only the template's words change."""
    corpus = C.ToyWorldCorpus(0)
    tmpl = "Once {A} and {B} went to the {place}, {S} mailed a {object} to"
    other = "When {A} and {B} went to the {place}, {S} gave a {object} to"
    a = corpus.ioi_prompts(8, "ABBA", heldout_templates=True, templates=(tmpl,))
    b = corpus.ioi_prompts(8, "ABBA", heldout_templates=True, templates=(other,))
    default = corpus.ioi_prompts(8, "ABBA", heldout_templates=True)
    assert all(p.text.startswith("Once ") and " mailed a " in p.text for p in a)
    assert [(p.io, p.s) for p in a] == [(p.io, p.s) for p in b]
    assert [p.text.split()[-2] for p in a] == [p.text.split()[-2] for p in b]  # the same object
    assert [p.text.split()[7] for p in a] == [p.text.split()[7] for p in b]  # the same place ("the {place},")
    assert corpus.ioi_prompts(8, "ABBA", heldout_templates=True) == default  # the default is unchanged
