"""The toy-world corpus: task families mixed with plain story text, generated deterministically from a seed.

Each training row is ``<|endoftext|>`` followed by sentences drawn independently from the families below (by
`FAMILY_WEIGHTS`; from `phase2_start_row` on by `PHASE2_FAMILY_WEIGHTS`, with compositional IOI sentences, then
IOI from a grammar from `phase3_start_row`, then slot-noised IOI and successor runs from `phase4_start_row`, then
the phase-4 mix with every name in IOI sentences from `phase5_start_row`), cut to the model's context. Row *i* of seed *s* depends only on ``(s, i)``, so a training run
can resume at any step and reproduce the same stream. Evaluation prompts come from held-out generators that
share no randomness with training.

Families and the mechanism each is meant to require (later case studies check graphs against these):

``ioi``
    Indirect object identification: "When Mary and John went to the store, John gave a drink to" → " Mary".
    16 training templates, 3 held-out templates; ABBA and BABA orders. The answer is the name that occurs once.
    Expected mechanism (Wang et al. 2022): duplicate-token / induction heads mark the repeated subject S2,
    S-inhibition moves "S is duplicated" to the final position, name-mover heads copy the remaining name.
    Held-out split: name pairs that never occur in a training IOI sentence — both names from `IOI_HELDOUT_NAMES`
    (phases 1-4 use no held-out name in IOI at all; phase 5 uses each with training-name partners only, so every
    name has an IOI role but no held-out pair is ever seen) — plus 3 templates never used in training.
``induction``
    A span of 4–16 random vocabulary words, an optional interruption, then the same span again. Requires
    previous-token heads and induction heads (copy the token that followed the current token last time).
    Held-out split: fresh random spans (a separate random stream).
``facts``
    One-hop facts in several phrasings ("Lyon is a city in France.", "The capital of France is Paris.").
    Requires storing associations (MLP lookups keyed on the entity token) and moving them to the last position.
``two_hop``
    "The capital of the country containing Lyon is Paris." Requires composing two stored facts
    (city → country → capital). Held-out split: `TWO_HOP_HELDOUT_CITIES`, whose two-hop question never occurs
    in training (their one-hop facts do).
``greater_than``
    "The war lasted from the year 1732 to the year 1758." The end year is uniform above the start year within
    the century. Requires reading the start year's two-digit token and boosting larger two-digit tokens
    (Hanna et al. 2023). Held-out split: start years (century, yy) with (century index + yy) % 5 == 0.
``successor``
    Runs of days, months or number words ("Monday, Tuesday, Wednesday"). Requires a successor lookup
    (attend to the previous item, map it to the next). Held-out split: carrier phrases never used in training.
``pronoun``
    "Mary went to the park because she wanted a book." Requires attending to the subject and reading its gender.
    Held-out split: two templates never used in training.
``callback`` (phases 2-4)
    "Carol found a small hat. The hat belonged to Carol." A name mentioned again later: trains copying of every
    name (held-out IOI names included) without any IOI structure.
``story``
    Connective text: names in many roles, places, objects, cities, days. This keeps the model a small language
    model rather than a lookup table. (It does not make names generic enough for IOI on names that never took
    part in an IOI sentence: the phase-4 model answered those at 76-93%; hence phase 5.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

from circuits.organism import world as W
from circuits.organism.templates import (
    CALLBACK_TEMPLATES,
    FAMILY_WEIGHTS,
    FINAL_FAMILY_WEIGHTS,
    GREATER_THAN_TEMPLATE,
    IOI_ACTIONS,
    IOI_FINAL_ACTIONS,
    IOI_FINAL_ADVERBS,
    IOI_FINAL_FILLERS,
    IOI_FINAL_FRAMES,
    IOI_FINAL_VERB_PHRASES,
    IOI_FRAMES,
    IOI_HELDOUT_TEMPLATES,
    IOI_INTROS,
    IOI_PHASE3_ACTIONS,
    IOI_TRAIN_TEMPLATES,
    IOI_VERB_PHRASES,
    ONE_HOP_TRAIN_TEMPLATES,
    PHASE2_FAMILY_WEIGHTS,
    PHASE2_START_ROW,
    PHASE3_START_ROW,
    PHASE4_FAMILY_WEIGHTS,
    PHASE4_NOISED_SHARE,
    PHASE4_START_ROW,
    PHASE5_START_ROW,
    PRONOUN_HELDOUT_TEMPLATES,
    PRONOUN_TRAIN_TEMPLATES,
    SEQUENCE_KIND_WORDS,
    STORY_TEMPLATES,
    SUCCESSOR_HELDOUT_CARRIERS,
    SUCCESSOR_TRAIN_CARRIERS,
    TWO_HOP_TEMPLATE,
    induction_word_pool,
    noise_words,
)

Split = Literal["train", "heldout"]


# ---------------------------------------------------------------------------------------------------------------
# Evaluation prompts (named, typed values)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IOIPrompt:
    """An IOI prompt: the correct answer is `io`; `s` is the repeated subject."""

    text: str
    io: str
    s: str
    order: Literal["ABBA", "BABA"]
    template: int
    heldout_template: bool


@dataclass(frozen=True)
class Prompt:
    """A prompt with one correct next word and optional contrast word (for a logit difference)."""

    text: str
    answer: str
    family: str
    contrast: str | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class GreaterThanPrompt:
    """"... from the year 1732 to the year 17": valid answers are two-digit tokens strictly above `start`."""

    text: str
    century: str
    start: int


@dataclass(frozen=True)
class InductionPrompt:
    """A random span repeated once: ``words + words``; score positions of the second copy after its first."""

    words: tuple[str, ...]


# ---------------------------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------------------------


def _pair(rng: random.Random, names: tuple[str, ...]) -> tuple[str, str]:
    a, b = rng.sample(names, 2)
    return a, b


_HELDOUT_NAME_SET = frozenset(W.IOI_HELDOUT_NAMES)


def is_heldout_ioi_pair(a: str, b: str) -> bool:
    """Whether a name pair belongs to the IOI held-out split (both names from `IOI_HELDOUT_NAMES`)."""
    return a in _HELDOUT_NAME_SET and b in _HELDOUT_NAME_SET


def ioi_training_pair(rng: random.Random, every_name: bool) -> tuple[str, str]:
    """(IO, S) for a training IOI sentence: training names only (phases 1-4), or — `every_name` (phase 5) — any
    two names except a held-out pair."""
    if not every_name:
        return _pair(rng, W.IOI_TRAIN_NAMES)
    while True:
        a, b = _pair(rng, W.NAMES)
        if not is_heldout_ioi_pair(a, b):
            return a, b


def greater_than_heldout(century: str, yy: int) -> bool:
    """Whether a start year belongs to the greater-than held-out split."""
    return (W.CENTURIES.index(century) + yy) % 5 == 0


class ToyWorldCorpus:
    """Deterministic generator of training text and evaluation prompts for one seed."""

    def __init__(self, seed: int = 0, phase2_start_row: int = PHASE2_START_ROW,
                 phase3_start_row: int = PHASE3_START_ROW, mix: Literal["phased", "final"] = "phased",
                 phase4_start_row: int = PHASE4_START_ROW, phase5_start_row: int = PHASE5_START_ROW):
        if mix not in ("phased", "final"):
            raise ValueError(f"unknown corpus mix {mix!r}; use 'phased' or 'final'")
        self.seed = seed
        self.mix = mix
        self.phase2_start_row = phase2_start_row
        self.phase3_start_row = phase3_start_row
        self.phase4_start_row = phase4_start_row
        self.phase5_start_row = phase5_start_row
        self._families = list(FAMILY_WEIGHTS)
        self._weights = [FAMILY_WEIGHTS[f] for f in self._families]
        weights2 = FINAL_FAMILY_WEIGHTS if mix == "final" else PHASE2_FAMILY_WEIGHTS
        self._families2 = list(weights2)
        self._weights2 = [weights2[f] for f in self._families2]
        self._families4 = list(PHASE4_FAMILY_WEIGHTS)
        self._weights4 = [PHASE4_FAMILY_WEIGHTS[f] for f in self._families4]
        self._pool = induction_word_pool()
        self._noise_lower, self._noise_upper = noise_words()

    # -- training text ------------------------------------------------------------------------------------------

    def rng(self, stream: str, index: int) -> random.Random:
        """An independent random stream per (seed, stream, index); string seeds are stable across runs."""
        return random.Random(f"{self.seed}/{stream}/{index}")

    def phase(self, index: int, stream: str) -> int:
        """The training phase of a row: 1-5 by row index; every other stream is phase 3 (natural text only).

        With ``mix="final"`` every row of every stream is "phase" 0: the single final mix.
        """
        if self.mix == "final":
            return 0
        if stream != "train":
            return 3
        if index >= self.phase5_start_row:
            return 5
        if index >= self.phase4_start_row:
            return 4
        if index >= self.phase3_start_row:
            return 3
        return 1 if index < self.phase2_start_row else 2

    def phase_start_row(self, phase: int) -> int:
        """The first training row of a phase (1-5)."""
        starts = {1: 0, 2: self.phase2_start_row, 3: self.phase3_start_row, 4: self.phase4_start_row,
                  5: self.phase5_start_row}
        if phase not in starts:
            raise ValueError(f"unknown training phase {phase}; use 1-5")
        return starts[phase]

    def row_text(self, index: int, n_tokens: int, stream: str = "train") -> str:
        """Text for training row `index` with at least `n_tokens` tokens (the caller truncates)."""
        from circuits.organism.tokenizer import pretokenize

        rng = self.rng(stream, index)
        phase = self.phase(index, stream)
        parts: list[str] = []
        count = 0
        while count < n_tokens:
            if phase == 1:
                sentence = self.sentence(rng)
            else:
                families, weights = (self._families4, self._weights4) if phase >= 4 else (self._families2,
                                                                                         self._weights2)
                family = rng.choices(families, weights)[0]
                prefix = {2: "_phase2_", 3: "_phase3_", 4: "_phase4_", 5: "_phase5_", 0: "_final_"}[phase]
                sentence = getattr(self, f"{prefix}{family}", getattr(self, f"_train_{family}"))(rng)
            parts.append(sentence)
            count += len(pretokenize(sentence))
        return " ".join(parts)

    def sentence(self, rng: random.Random, family: str | None = None) -> str:
        """One training sentence from `family` (or a family drawn by weight)."""
        family = family or rng.choices(self._families, self._weights)[0]
        return getattr(self, f"_train_{family}")(rng)

    def _fill(self, rng: random.Random, template: str, **given: str) -> str:
        n, m = _pair(rng, W.NAMES)
        country, capital, cities = rng.choice(W.COUNTRIES)
        values = {
            "N": n, "M": m, "place": rng.choice(W.PLACES), "object": rng.choice(W.OBJECTS),
            "adj": rng.choice(W.ADJECTIVES), "city": rng.choice(W.CITIES), "country": country,
            "capital": capital, "day": rng.choice(W.DAYS), "month": rng.choice(W.MONTHS),
        }
        values.update(given)
        pro_name = values["N"]
        values.setdefault("pro", "he" if W.gender_of(pro_name) == "male" else "she")
        values.setdefault("pos", "his" if W.gender_of(pro_name) == "male" else "her")
        return template.format(**values)

    def _ioi(self, rng: random.Random, template: str, names: tuple[str, str], order: str) -> tuple[str, str, str]:
        io, s = names
        a, b = (io, s) if order == "ABBA" else (s, io)
        text = template.format(
            A=a, B=b, S=s, place=rng.choice(W.PLACES), object=rng.choice(W.OBJECTS)
        )
        return text, io, s

    def _train_ioi(self, rng: random.Random, every_name: bool = False) -> str:
        template = rng.choice(IOI_TRAIN_TEMPLATES)
        text, io, _ = self._ioi(rng, template, ioi_training_pair(rng, every_name), rng.choice(["ABBA", "BABA"]))
        return f"{text} {io}."

    def _phase2_ioi(self, rng: random.Random) -> str:
        template = rng.choice(IOI_INTROS) + " " + rng.choice(IOI_ACTIONS)
        text, io, _ = self._ioi(rng, template, _pair(rng, W.IOI_TRAIN_NAMES), rng.choice(["ABBA", "BABA"]))
        return f"{text} {io}."

    def _phase3_ioi(self, rng: random.Random) -> str:
        intro = rng.choice(IOI_FRAMES).replace("{vp}", rng.choice(IOI_VERB_PHRASES))
        template = intro + " " + rng.choice(IOI_PHASE3_ACTIONS)
        text, io, _ = self._ioi(rng, template, _pair(rng, W.IOI_TRAIN_NAMES), rng.choice(["ABBA", "BABA"]))
        return f"{text} {io}."

    def _final_ioi(self, rng: random.Random, every_name: bool = False) -> str:
        if rng.random() < 0.3:
            return self._train_ioi(rng, every_name)
        intro = rng.choice(IOI_FINAL_FRAMES).replace("{vp}", rng.choice(IOI_FINAL_VERB_PHRASES))
        if intro.endswith(".") and rng.random() < 0.3:
            intro += " " + rng.choice(IOI_FINAL_FILLERS)
        action = rng.choice(IOI_FINAL_ACTIONS)
        if intro.endswith(".") and rng.random() < 0.2:
            action = rng.choice(IOI_FINAL_ADVERBS) + " " + action
        filled = (intro + " " + action).replace("{adj}", rng.choice(W.ADJECTIVES)).replace(
            "{month}", rng.choice(W.MONTHS)).replace("{city}", rng.choice(W.CITIES)).replace(
            "{day}", rng.choice(W.DAYS))
        text, io, _ = self._ioi(rng, filled, ioi_training_pair(rng, every_name), rng.choice(["ABBA", "BABA"]))
        return f"{text} {io}."

    def _phase4_ioi(self, rng: random.Random, every_name: bool = False) -> str:
        if rng.random() >= PHASE4_NOISED_SHARE:
            return self._final_ioi(rng, every_name)
        intro = rng.choice(IOI_FINAL_FRAMES).replace("{vp}", rng.choice(IOI_FINAL_VERB_PHRASES))
        template = self._noised(rng, intro, keep_last=False) + " " + self._noised(
            rng, rng.choice(IOI_FINAL_ACTIONS), keep_last=True)
        filled = template.replace("{adj}", rng.choice(W.ADJECTIVES)).replace(
            "{month}", rng.choice(W.MONTHS)).replace("{city}", rng.choice(W.CITIES)).replace(
            "{day}", rng.choice(W.DAYS))
        text, io, _ = self._ioi(rng, filled, ioi_training_pair(rng, every_name), rng.choice(["ABBA", "BABA"]))
        return f"{text} {io}."

    def _phase5_ioi(self, rng: random.Random) -> str:
        """Phase-4 IOI with every name (no held-out pair)."""
        return self._phase4_ioi(rng, every_name=True)

    def _phase5_successor(self, rng: random.Random) -> str:
        return self._phase4_successor(rng)

    def _noised(self, rng: random.Random, clause: str, keep_last: bool) -> str:
        """A template clause with words replaced (p = 0.3 each) and random words inserted (p = 0.15 per gap).

        Placeholders, punctuation and "and" are kept; so is the last word when `keep_last` (the cue before the
        answer).
        The first word, when it is a word, is replaced by a random capitalised word with p = 0.7; with p = 0.25 a
        random capitalised word (and a comma, half the time) is put in front."""
        words = clause.split(" ")
        out: list[str] = []
        for i, w in enumerate(words):
            last = keep_last and i == len(words) - 1
            plain = w.isalpha() and not last and w != "and"  # "{A} and {B}" stays: it defines the task
            if plain and i == 0 and w[0].isupper():
                out.append(rng.choice(self._noise_upper) if rng.random() < 0.7 else w)
            elif plain and rng.random() < 0.3:
                out.append(rng.choice(self._noise_lower))
            else:
                out.append(w)
            if not last and i > 0 and w not in ("and", "{A}") and rng.random() < 0.15:
                out.extend(rng.choice(self._noise_lower) for _ in range(rng.randint(1, 3)))
        if words and words[0][:1].isupper() and rng.random() < 0.25:
            out.insert(0, rng.choice(self._noise_upper) + ("," if rng.random() < 0.5 else ""))
        return " ".join(out)

    def _phase4_successor(self, rng: random.Random) -> str:
        """Half the time a successor run in a noised carrier: the run, not the carrier, predicts the next item."""
        if rng.random() < 0.5:
            return self._train_successor(rng)
        kind, seq = self._sequence(rng)
        carrier = self._noised(rng, rng.choice(SUCCESSOR_TRAIN_CARRIERS), keep_last=False)
        return self._fill(rng, carrier, kind=SEQUENCE_KIND_WORDS[kind], seq=", ".join(seq))

    def _train_callback(self, rng: random.Random) -> str:
        return self._fill(rng, rng.choice(CALLBACK_TEMPLATES))

    def _span(self, rng: random.Random, low: int, high: int) -> list[str]:
        return [rng.choice(self._pool) for _ in range(rng.randint(low, high))]

    def _train_induction(self, rng: random.Random) -> str:
        span = " ".join(self._span(rng, 4, 16))
        if rng.random() < 0.5:
            return f"{span} {span}."
        return f"{span}. {self.sentence(rng, 'story')} {span}."

    def _train_facts(self, rng: random.Random) -> str:
        country, capital, cities = rng.choice(W.COUNTRIES)
        return self._fill(rng, rng.choice(ONE_HOP_TRAIN_TEMPLATES), country=country, capital=capital,
                          city=rng.choice(cities))

    def _train_two_hop(self, rng: random.Random) -> str:
        city = rng.choice(W.TWO_HOP_TRAIN_CITIES)
        return TWO_HOP_TEMPLATE.format(city=city, capital=W.CAPITAL_OF[W.COUNTRY_OF[city]])

    def _train_greater_than(self, rng: random.Random) -> str:
        while True:
            c, y1 = rng.choice(W.CENTURIES), rng.randint(1, 98)
            if not greater_than_heldout(c, y1):
                break
        y2 = rng.randint(y1 + 1, 99)
        return GREATER_THAN_TEMPLATE.format(event=rng.choice(W.EVENTS), c=c, y1=f"{y1:02d}", y2=f"{y2:02d}")

    def _sequence(self, rng: random.Random) -> tuple[str, list[str]]:
        kind = rng.choice(list(W.SEQUENCES))
        items, wraps = W.SEQUENCES[kind]
        length = rng.randint(3, 7)
        start = rng.randrange(len(items) if wraps else len(items) - length + 1)
        return kind, [items[(start + i) % len(items)] for i in range(length)]

    def _train_successor(self, rng: random.Random) -> str:
        kind, seq = self._sequence(rng)
        return self._fill(rng, rng.choice(SUCCESSOR_TRAIN_CARRIERS), kind=SEQUENCE_KIND_WORDS[kind],
                          seq=", ".join(seq))

    def _train_pronoun(self, rng: random.Random) -> str:
        return self._fill(rng, rng.choice(PRONOUN_TRAIN_TEMPLATES), N=rng.choice(W.NAMES))

    def _train_story(self, rng: random.Random) -> str:
        return self._fill(rng, rng.choice(STORY_TEMPLATES))

    # -- evaluation prompts -------------------------------------------------------------------------------------

    def ioi_prompts(self, n: int, order: Literal["ABBA", "BABA"], heldout_templates: bool = False,
                    names: tuple[str, ...] = W.IOI_HELDOUT_NAMES,
                    templates: tuple[str, ...] | None = None) -> list[IOIPrompt]:
        """IOI prompts on pairs of held-out names (by default: unseen pairs), from training or held-out templates.

        `templates` replaces that template list (diagnostics: `benchmarks/ioi_word_swap.py`); the random stream is
        still the one of `heldout_templates`, so with one template of the same placeholders every such list draws the
        same names, places and objects."""
        rng = self.rng(f"eval-ioi-{order}-{heldout_templates}", 0)
        if templates is None:
            templates = IOI_HELDOUT_TEMPLATES if heldout_templates else IOI_TRAIN_TEMPLATES
        out = []
        for _ in range(n):
            t = rng.randrange(len(templates))
            text, io, s = self._ioi(rng, templates[t], _pair(rng, names), order)
            out.append(IOIPrompt(text, io, s, order, t, heldout_templates))
        return out

    def induction_prompts(self, n: int, length: int = 10) -> list[InductionPrompt]:
        """Fresh random spans (a stream training never uses)."""
        rng = self.rng("eval-induction", 0)
        return [InductionPrompt(tuple(rng.choice(self._pool) for _ in range(length))) for _ in range(n)]

    def fact_prompts(self) -> list[Prompt]:
        """One-hop recall: every city → country and every country → capital, in training phrasings."""
        out = [Prompt(f"{city} is a city in", W.COUNTRY_OF[city], "one_hop") for city in W.CITIES]
        out += [Prompt(f"The capital of {c} is", cap, "one_hop") for c, cap, _ in W.COUNTRIES]
        out += [Prompt(f"{cap} is the capital of", c, "one_hop") for c, cap, _ in W.COUNTRIES]
        return out

    def two_hop_prompts(self, heldout: bool) -> list[Prompt]:
        cities = W.TWO_HOP_HELDOUT_CITIES if heldout else W.TWO_HOP_TRAIN_CITIES
        return [Prompt(f"The capital of the country containing {c} is", W.CAPITAL_OF[W.COUNTRY_OF[c]], "two_hop")
                for c in cities]

    def greater_than_prompts(self) -> list[GreaterThanPrompt]:
        """Every held-out start year (yy in 02..97), with a fixed event word per prompt."""
        rng = self.rng("eval-greater-than", 0)
        out = []
        for c in W.CENTURIES:
            for yy in range(2, 98):
                if greater_than_heldout(c, yy):
                    event = rng.choice(W.EVENTS)
                    out.append(GreaterThanPrompt(f"The {event} lasted from the year {c}{yy:02d} to the year {c}",
                                                 c, yy))
        return out

    def successor_prompts(self, n: int) -> list[Prompt]:
        rng = self.rng("eval-successor", 0)
        out = []
        for _ in range(n):
            kind, seq = self._sequence(rng)
            carrier = rng.choice(SUCCESSOR_HELDOUT_CARRIERS)
            prefix = carrier.split("{seq}")[0]
            text = self._fill(rng, prefix, kind=SEQUENCE_KIND_WORDS[kind]) + ", ".join(seq[:-1]) + ","
            out.append(Prompt(text, seq[-1], "successor", meta={"kind": kind}))
        return out

    def pronoun_prompts(self, n: int) -> list[Prompt]:
        rng = self.rng("eval-pronoun", 0)
        out = []
        for _ in range(n):
            name = rng.choice(W.NAMES)
            template = rng.choice(PRONOUN_HELDOUT_TEMPLATES)
            prefix = template.split("{pro}")[0].rstrip()
            text = self._fill(rng, prefix, N=name)
            right, wrong = ("he", "she") if W.gender_of(name) == "male" else ("she", "he")
            out.append(Prompt(text, right, "pronoun", contrast=wrong))
        return out
