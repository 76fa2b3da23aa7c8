"""The toy world's sentence templates, family mixes and training phases, and the word lists derived from them.

Placeholders: {A} {B} first/second name, {S} subject, {N} {M} names, {place} {object} {adj} {city} {country}
{capital} {day} {month} {event} {pro} {pos} (possessive). What each family is for, and how the phases follow one
another, is told in :mod:`circuits.organism.corpus`, which draws sentences from these templates.
"""

from __future__ import annotations

import re

from circuits.organism import world as W

IOI_TRAIN_TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the {place}, {S} gave a {object} to",
    "When {A} and {B} got a {object} at the {place}, {S} decided to give it to",
    "After {A} and {B} went to the {place}, {S} gave a {object} to",
    "Then, {A} and {B} had a long argument. Afterwards {S} said to",
    "While {A} and {B} were working at the {place}, {S} gave a {object} to",
    "{A} and {B} went to the {place}. {S} handed a {object} to",
    "Friends {A} and {B} found a {object} at the {place}. {S} gave it to",
    "The {place} was quiet when {A} and {B} arrived. {S} passed a {object} to",
    "When {A} and {B} arrived at the {place}, {S} threw a {object} to",
    "{A} and {B} were walking to the {place}, and {S} showed a {object} to",
    "After the lunch, {A} and {B} went to the {place}. {S} brought a {object} to",
    "Yesterday {A} and {B} visited the {place}, where {S} sold a {object} to",
    "When {A} and {B} met at the {place}, {S} sent a {object} to",
    "Then, {A} and {B} went to the {place}. {S} offered a {object} to",
    "Since {A} and {B} were at the {place}, {S} lent a {object} to",
    "{A} and {B} had fun at the {place}, and {S} gave a {object} to",
)
IOI_HELDOUT_TEMPLATES: tuple[str, ...] = (
    "After {A} and {B} spent the day at the {place}, {S} mailed a {object} to",
    "Once {A} and {B} reached the {place}, {S} tossed a {object} to",
    "As {A} and {B} left the {place}, {S} returned the {object} to",
)

STORY_TEMPLATES: tuple[str, ...] = (
    "{N} saw {M} at the {place}.",
    "{N} gave the {object} to {M}.",
    "{N} walked to the {place} and bought a {object}.",
    "{N} met {M} in {city} on {day}.",
    "{N} called {M} on {day}.",
    "It was a {adj} day at the {place}.",
    "The {object} was {adj}.",
    "{N} likes the {adj} {object}.",
    "{N} and {M} talked for a long time.",
    "{N} and {M} are old friends.",
    "{N} thanked {M} for the {object}.",
    "{M} smiled at {N}.",
    "{N} mailed a {object} to {M}.",
    "{N} tossed the {object} into the {place}.",
    "{N} returned the {object} to the {place}.",
    "{N} spent the day at the {place}.",
    "Once the rain stopped, {N} reached the {place}.",
    "As the sun set, {N} left the {place}.",
    "In {month}, {N} went to {city}.",
    "{N} found a {adj} {object} near the {place}.",
    "The {place} in {city} was {adj}.",
    "{N} asked {M} about the {object}.",
    "{N} waited for {M} at the {place}.",
    "Everyone at the {place} knew {N}.",
    "{N} helped {M} carry the {object} home.",
    "{N} wrote a letter to {M} in {month}.",
    "Later, {N} and {M} went home.",
    "The {adj} {object} belonged to {N}.",
)

PRONOUN_TRAIN_TEMPLATES: tuple[str, ...] = (
    "{N} went to the {place} because {pro} wanted a {object}.",
    "{N} was happy, so {pro} bought a {object}.",
    "When {N} arrived at the {place}, {pro} was tired.",
    "{N} lost the {object}, and then {pro} looked for it.",
    "{N} said that {pro} liked the {place}.",
    "After lunch, {N} took {pos} {object} to the {place}.",
)
PRONOUN_HELDOUT_TEMPLATES: tuple[str, ...] = (
    "{N} stayed at the {place} because {pro} was busy.",
    "{N} opened the {object}, and {pro} smiled.",
)

SUCCESSOR_TRAIN_CARRIERS: tuple[str, ...] = (
    "{N} listed the {kind}: {seq}.",
    "The {kind} went {seq}.",
    "{N} said {seq}.",
    "We counted {seq}.",
)
SUCCESSOR_HELDOUT_CARRIERS: tuple[str, ...] = ("In order, {N} wrote {seq}.",)

ONE_HOP_TRAIN_TEMPLATES: tuple[str, ...] = (
    "{city} is a city in {country}.",
    "{city} is located in {country}.",
    "The city of {city} is in {country}.",
    "{N} lives in {city}, which is in {country}.",
    "The capital of {country} is {capital}.",
    "{capital} is the capital of {country}.",
    "{N} flew to {capital}, the capital of {country}.",
)
TWO_HOP_TEMPLATE = "The capital of the country containing {city} is {capital}."

GREATER_THAN_TEMPLATE = "The {event} lasted from the year {c}{y1} to the year {c}{y2}."

FAMILY_WEIGHTS: dict[str, float] = {
    "ioi": 0.22,
    "induction": 0.12,
    "facts": 0.15,
    "two_hop": 0.05,
    "greater_than": 0.10,
    "successor": 0.08,
    "pronoun": 0.08,
    "story": 0.20,
}

#: Phase 2 (the last `PHASE2_STEPS` of training) builds IOI sentences compositionally — any intro clause with any
#: action clause (13 × 13 = 169 combinations, all from training words) — so that the model learns a template-free
#: mechanism, and adds `CALLBACK_TEMPLATES`: a single name mentioned again later, which trains copying of every
#: name (held-out IOI names included) without any IOI structure.
IOI_INTROS: tuple[str, ...] = (
    "When {A} and {B} went to the {place},",
    "After {A} and {B} went to the {place},",
    "While {A} and {B} were working at the {place},",
    "When {A} and {B} arrived at the {place},",
    "Since {A} and {B} were at the {place},",
    "When {A} and {B} met at the {place},",
    "Then, {A} and {B} went to the {place}.",
    "{A} and {B} went to the {place}.",
    "Yesterday {A} and {B} visited the {place}.",
    "{A} and {B} had fun at the {place}.",
    "Friends {A} and {B} found a {object} at the {place}.",
    "The {place} was quiet when {A} and {B} arrived.",
    "After the lunch, {A} and {B} went to the {place}.",
)
IOI_ACTIONS: tuple[str, ...] = (
    "{S} gave a {object} to",
    "{S} handed a {object} to",
    "{S} passed a {object} to",
    "{S} threw a {object} to",
    "{S} showed a {object} to",
    "{S} brought a {object} to",
    "{S} sold a {object} to",
    "{S} sent a {object} to",
    "{S} offered a {object} to",
    "{S} lent a {object} to",
    "Afterwards {S} said to",
    "{S} decided to give it to",
    "{S} gave it to",
)
CALLBACK_TEMPLATES: tuple[str, ...] = (
    "{N} walked to the {place}. Everyone at the {place} knew {N}.",
    "{N} found a {adj} {object}. The {object} belonged to {N}.",
    "In {month}, {N} went to {city}. Later, {N} went home.",
    "{N} spent the day at the {place}. Everyone at the {place} knew {N}.",
    "{N} lost the {object}. The {object} belonged to {N}.",
    "{N} met {M} in {city}. Later, {N} went home.",
)
PHASE2_FAMILY_WEIGHTS: dict[str, float] = {
    "ioi": 0.30,
    "callback": 0.10,
    "induction": 0.10,
    "facts": 0.12,
    "two_hop": 0.04,
    "greater_than": 0.08,
    "successor": 0.08,
    "pronoun": 0.06,
    "story": 0.12,
}
#: Phase 3 (the last `phase3_steps`) draws IOI intros from a small grammar — 10 clause frames × 11 verb phrases
#: (110 intros) — and 24 actions, many without "to" ("Mary thanked" → John), so that neither where the names sit
#: nor the final verb can stand in for the mechanism (phase 2 left the model keyed to its 13 actions).
IOI_FRAMES: tuple[str, ...] = (
    "When {A} and {B} {vp} the {place},",
    "After {A} and {B} {vp} the {place},",
    "While {A} and {B} {vp} the {place},",
    "Since {A} and {B} {vp} the {place},",
    "{A} and {B} {vp} the {place}.",
    "Then, {A} and {B} {vp} the {place}.",
    "Yesterday {A} and {B} {vp} the {place}.",
    "After the lunch, {A} and {B} {vp} the {place}.",
    "{A} and {B} {vp} the {place}, and",
    "Friends {A} and {B} {vp} the {place}.",
)
IOI_VERB_PHRASES: tuple[str, ...] = (
    "went to", "arrived at", "were at", "met at", "visited", "had fun at", "walked to", "were working at",
    "found a {object} at", "bought a {object} at", "waited at",
)
IOI_PHASE3_ACTIONS: tuple[str, ...] = IOI_ACTIONS + (
    "{S} decided to give a {object} to",
    "{S} wrote a letter to",
    "{S} took the {object} to",
    "{S} talked to",
    "{S} smiled at",
    "{S} thanked",
    "{S} called",
    "{S} helped",
    "{S} asked",
    "{S} waited for",
    "{S} looked for",
)

#: The "final" mix (`ToyWorldCorpus(mix="final")`): one corpus from step 0, no phases. IOI sentences come 30% from
#: the 16 training templates and 70% from a wider grammar — 16 frames × 17 verb phrases × 30 actions, an optional
#: filler sentence between the clauses and an optional adverb before the action — so that neither where the names
#: sit, the connective, nor the final verb can stand in for the mechanism. Training the phased recipe left the model
#: keyed to its templates (held-out templates ABBA 34%); the grammar uses none of the held-out templates' words
#: ("Once", "As", "spent the day", "reached", "left", "mailed", "tossed", "returned") in IOI sentences.
IOI_FINAL_FRAMES: tuple[str, ...] = IOI_FRAMES + (
    "In {month}, {A} and {B} {vp} the {place}.",
    "Later, {A} and {B} {vp} the {place}.",
    "It was a {adj} day when {A} and {B} {vp} the {place}.",
    "{A} and {B} {vp} the {place} in {city}.",
    "When {A} and {B} {vp} the {place} on {day},",
    "After lunch, {A} and {B} {vp} the {place}.",
)
IOI_FINAL_VERB_PHRASES: tuple[str, ...] = IOI_VERB_PHRASES + (
    "stayed at", "were walking to", "lost a {object} at", "opened a {object} at", "looked for a {object} at",
    "talked at",
)
IOI_FINAL_ACTIONS: tuple[str, ...] = IOI_PHASE3_ACTIONS + (
    "{S} gave the {object} to", "{S} handed the {object} to", "{S} showed the {object} to", "{S} saw",
    "{S} knew", "{S} brought the {object} to",
)
IOI_FINAL_FILLERS: tuple[str, ...] = (
    "It was a {adj} day.", "The {place} was {adj}.", "The {object} was {adj}.", "It was {adj}.",
)
IOI_FINAL_ADVERBS: tuple[str, ...] = ("Then", "Later,", "Afterwards", "Then,", "Yesterday")
FINAL_FAMILY_WEIGHTS: dict[str, float] = {
    "ioi": 0.30,
    "callback": 0.10,
    "induction": 0.11,
    "facts": 0.12,
    "two_hop": 0.04,
    "greater_than": 0.08,
    "successor": 0.07,
    "pronoun": 0.06,
    "story": 0.12,
}

#: Phase 4 (the last `phase4_steps`) adds *slot-noised* IOI: a phase-3/final-grammar sentence in which words
#: other than the names and the final cue are replaced at random by other vocabulary words, random words are
#: inserted between clauses, and the opening word is often replaced by a random capitalised word. Phase 3 left the
#: model keyed to the words around the names (an unfamiliar opening word such as "Once" made it answer the second
#: name in ABBA prompts; an unfamiliar verb such as "mailed" halved its accuracy): with the words around the names
#: randomised, only the repetition of a name identifies the subject. The held-out templates' own words are never
#: used (`heldout_only_words()`).
PHASE4_FAMILY_WEIGHTS: dict[str, float] = {
    "ioi": 0.35,
    "callback": 0.10,
    "induction": 0.10,
    "facts": 0.11,
    "two_hop": 0.04,
    "greater_than": 0.08,
    "successor": 0.07,
    "pronoun": 0.05,
    "story": 0.10,
}
#: Share of phase-4 IOI sentences that are slot-noised (the rest come from the final grammar, unchanged).
PHASE4_NOISED_SHARE = 0.6

#: Training rows from this index on use phase 2 (= step 4500 of batch 32); every other stream is phase 3 throughout.
PHASE2_START_ROW = 4500 * 32
#: Training rows from this index on use phase 3 (= step 6000); every other stream is phase 3 throughout.
PHASE3_START_ROW = 6000 * 32
#: Training rows from this index on use phase 4 (= step 7500).
PHASE4_START_ROW = 7500 * 32
#: Phase 5 (rows from this index on, = step 9000) is the phase-4 mix with IOI names drawn from every name, except
#: that a pair of two `IOI_HELDOUT_NAMES` never occurs (`ioi_training_pair`). Phases 1-4 kept held-out names out
#: of IOI altogether; the phase-4 organism answered IOI with training names at 100% (logit difference 11-14) but
#: with held-out names at 76-93% (1.9-5.9): it had learned name-specific IOI features, not the role alone.
PHASE5_START_ROW = 9000 * 32

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _template_words(template: str) -> list[str]:
    from circuits.organism.tokenizer import pretokenize

    return [p.strip() for p in pretokenize(_PLACEHOLDER.sub(" ", template)) if p.strip()]


def all_corpus_words() -> set[str]:
    """Every word and punctuation mark the corpus can produce (the tokenizer's vocabulary before numbers)."""
    templates = (
        IOI_TRAIN_TEMPLATES + IOI_HELDOUT_TEMPLATES + IOI_INTROS + IOI_ACTIONS + CALLBACK_TEMPLATES
        + IOI_FRAMES + IOI_VERB_PHRASES + IOI_PHASE3_ACTIONS
        + IOI_FINAL_FRAMES + IOI_FINAL_VERB_PHRASES + IOI_FINAL_ACTIONS + IOI_FINAL_FILLERS + IOI_FINAL_ADVERBS
        + STORY_TEMPLATES + PRONOUN_TRAIN_TEMPLATES
        + PRONOUN_HELDOUT_TEMPLATES + SUCCESSOR_TRAIN_CARRIERS + SUCCESSOR_HELDOUT_CARRIERS
        + ONE_HOP_TRAIN_TEMPLATES + (TWO_HOP_TEMPLATE, GREATER_THAN_TEMPLATE)
    )
    words: set[str] = set()
    for t in templates:
        words.update(_template_words(t))
    words.update(W.NAMES + W.PLACES + W.OBJECTS + W.ADJECTIVES + W.CITIES + W.EVENTS)
    words.update(c for c, _, _ in W.COUNTRIES)
    words.update(cap for _, cap, _ in W.COUNTRIES)
    words.update(W.DAYS + W.MONTHS + W.NUMBER_WORDS)
    words.update(SEQUENCE_KIND_WORDS.values())
    words.update({"he", "she", "his", "her", ",", "."})
    return words


SEQUENCE_KIND_WORDS: dict[str, str] = {"days": "days", "months": "months", "numbers": "numbers"}


def induction_word_pool() -> tuple[str, ...]:
    """Words induction spans are drawn from: every word of the world (no punctuation)."""
    return tuple(sorted(w for w in all_corpus_words() if w.isalpha()))


#: Every template part a training IOI sentence can be built from (all phases and the final mix).
_IOI_TRAINING_PARTS: tuple[str, ...] = (
    IOI_TRAIN_TEMPLATES + IOI_INTROS + IOI_ACTIONS + IOI_FRAMES + IOI_VERB_PHRASES + IOI_PHASE3_ACTIONS
    + IOI_FINAL_FRAMES + IOI_FINAL_VERB_PHRASES + IOI_FINAL_ACTIONS + IOI_FINAL_FILLERS + IOI_FINAL_ADVERBS
)


def words_of(templates: tuple[str, ...]) -> set[str]:
    """The words (placeholders left out) of `templates`."""
    return {w for t in templates for w in _template_words(t)}


def ioi_training_words() -> frozenset[str]:
    """Every word a training IOI sentence can be built from (templates, frames, verb phrases, actions, fillers)."""
    return frozenset(words_of(_IOI_TRAINING_PARTS))


def ioi_heldout_only_words() -> frozenset[str]:
    """Words of the held-out IOI templates that no training IOI template, frame, verb phrase or action uses."""
    return frozenset(words_of(IOI_HELDOUT_TEMPLATES) - ioi_training_words())


def heldout_only_words() -> frozenset[str]:
    """Words that only held-out templates and carriers use (IOI, successor, pronoun): never noise."""
    heldout = words_of(IOI_HELDOUT_TEMPLATES + SUCCESSOR_HELDOUT_CARRIERS + PRONOUN_HELDOUT_TEMPLATES)
    train = words_of(_IOI_TRAINING_PARTS + SUCCESSOR_TRAIN_CARRIERS + PRONOUN_TRAIN_TEMPLATES)
    return frozenset((heldout - train) | ioi_heldout_only_words())


def noise_words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(lower-case, capitalised) words that phase-4 noise may put into a sentence.

    Never a name (in IOI the answer must stay the one name that occurs once), never " to" (the usual IOI cue),
    never a word that only held-out templates use (they stay held out)."""
    banned = set(W.NAMES) | {"to"} | heldout_only_words()
    words = [w for w in induction_word_pool() if w not in banned]
    return tuple(w for w in words if w[0].islower()), tuple(w for w in words if w[0].isupper())
