"""Named token sets: the categories feature labels are drawn from (:mod:`circuits.labels`).

A token set is a name ("city"), a plural for "promotes …" ("cities") and a set of vocabulary ids. Three sources:

* **The organism's planted world** (`organism_sets`): every vocabulary entry of the toy world falls in exactly one
  category — names, cities, capitals, countries, places, objects, adjectives, events, days, months, number words,
  centuries (" 17" of "1732"), two-digit years ("32"), pronouns, verbs, other nouns, the function words (as
  determiners, prepositions and connectives), punctuation and the BOS token. The lists come from :mod:`circuits.organism.world` and the corpus templates, so a label's
  category can be checked against the world that produced the text (docs/labels.md).
* **Any BPE model** (`generic_sets`): computed from the decoded vocabulary — leading space, capitalised, digits,
  punctuation. These overlap (" Paris" is both leading-space and capitalised); the labeller picks one.
* **A user's file** (`load_token_sets`): JSON ``{"name": ["tok", ...]}`` or text lines ``name: tok, tok, ...``.
  A listed string matches the vocabulary entry spelled the same and the one with a leading space ("Paris" matches
  "Paris" and " Paris"); a string that matches neither is an error (one line naming it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from circuits.errors import CircuitsError


class TokenSetError(CircuitsError):
    """A token-set file that cannot be read, or tokens that are not in the model's vocabulary."""


@dataclass(frozen=True)
class TokenSet:
    """A named set of vocabulary ids. `name` is singular ("city"), `plural` reads after "promotes" ("cities")."""

    name: str
    ids: frozenset[int]
    plural: str = ""

    def __post_init__(self):
        if not self.plural:
            object.__setattr__(self, "plural", self.name)

    def __len__(self) -> int:
        return len(self.ids)


def vocabulary_strings(model) -> list[str]:
    """The display text of every vocabulary id (what `circuits.attribution.targets.token_string` shows)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise TokenSetError("the model has no tokenizer: token sets need the vocabulary's text")
    n = model.cfg.d_vocab
    return [tok.decode([i], clean_up_tokenization_spaces=False) for i in range(n)]


def _index(vocab: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, s in enumerate(vocab):
        out.setdefault(s, []).append(i)
    return out


def resolve(name: str, strings: list[str], vocab: list[str], plural: str = "", strict: bool = True) -> TokenSet:
    """A `TokenSet` from token texts: each matches the entry spelled the same and the one with a leading space.

    With `strict`, a text that matches neither raises `TokenSetError` naming it (and up to 4 more)."""
    index = _index(vocab)
    ids: set[int] = set()
    missing = []
    for s in strings:
        hit = index.get(s, []) + ([] if s.startswith(" ") else index.get(" " + s, []))
        if not hit:
            missing.append(s)
        ids.update(hit)
    if missing and strict:
        shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise TokenSetError(f"token set {name!r}: {shown} {'is' if len(missing) == 1 else 'are'} not in the model's "
                            "vocabulary (each entry must be one token, with or without its leading space)")
    return TokenSet(name, frozenset(ids), plural)


# -- the organism's world ----------------------------------------------------------------------------------------

_PRONOUNS = ("he", "she", "his", "her", "it", "It", "We", "Everyone")
_VERBS = (
    "arrived", "asked", "belonged", "bought", "brought", "called", "carry", "containing", "counted", "decided",
    "flew", "found", "gave", "give", "got", "had", "handed", "helped", "knew", "lasted", "left", "lent", "liked",
    "likes", "listed", "lives", "located", "looked", "lost", "mailed", "met", "offered", "opened", "passed",
    "reached", "returned", "said", "saw", "sent", "set", "showed", "smiled", "sold", "spent", "stayed", "stopped",
    "talked", "thanked", "threw", "took", "tossed", "visited", "waited", "walked", "walking", "wanted", "was",
    "went", "were", "working", "wrote", "is", "are",
)
_NOUNS = ("argument", "capital", "city", "country", "day", "days", "friends", "Friends", "fun", "home", "lunch",
          "months", "numbers", "order", "rain", "sun", "time", "year")
# the function words, in three classes: one class of all of them holds 26% of the organism's text, so 8 of 10 top
# tokens in it would not be significant (p ≈ 5e-4 × 21 sets > 0.01); each class alone holds 6-10%
_DETERMINERS = ("a", "the", "The")
_PREPOSITIONS = ("In", "about", "at", "for", "from", "in", "into", "near", "of", "on", "to")
_CONNECTIVES = ("After", "Afterwards", "As", "Once", "Since", "Then", "When", "While", "Yesterday", "Later", "and",
                "because", "so", "that", "then", "when", "where", "which")
_PUNCTUATION = (",", ".", ":")


def organism_word_lists() -> list[tuple[str, str, tuple[str, ...]]]:
    """(name, plural, words) of every category of the planted world, in a fixed order; the categories are disjoint
    and cover the corpus's vocabulary (tests/test_labels.py checks both)."""
    from circuits.organism import world as W
    from circuits.organism.tokenizer import BOS

    return [
        ("name", "names", W.NAMES),
        ("city", "cities", W.CITIES),
        ("capital", "capitals", tuple(cap for _, cap, _ in W.COUNTRIES)),
        ("country", "countries", tuple(c for c, _, _ in W.COUNTRIES)),
        ("place", "places", W.PLACES),
        ("object", "objects", W.OBJECTS),
        ("adjective", "adjectives", W.ADJECTIVES + ("tired",)),
        ("event", "events", W.EVENTS),
        ("day", "days", W.DAYS),
        ("month", "months", W.MONTHS),
        ("number", "numbers", W.NUMBER_WORDS),
        ("century", "centuries", tuple(" " + c for c in W.CENTURIES)),  # " 17" of "1732"
        ("year", "years", W.TWO_DIGITS),  # "32" of "1732" (no leading space)
        ("pronoun", "pronouns", _PRONOUNS),
        ("verb", "verbs", _VERBS),
        ("noun", "nouns", _NOUNS),
        ("determiner", "determiners", _DETERMINERS),
        ("preposition", "prepositions", _PREPOSITIONS),
        ("connective", "connectives", _CONNECTIVES),
        ("punctuation", "punctuation", _PUNCTUATION),
        ("BOS", "BOS", (BOS,)),
    ]


def _exact(name: str, plural: str, strings: tuple[str, ...], vocab: list[str]) -> TokenSet:
    """Words get their leading space (the organism's tokenizer gives every word one); punctuation, two-digit pieces
    and special tokens are matched as spelled."""
    index = _index(vocab)
    ids: set[int] = set()
    for s in strings:
        key = s if (s.startswith(" ") or not re.fullmatch(r"[A-Za-z]+", s)) else " " + s
        if key not in index:
            raise TokenSetError(f"token set {name!r}: {key!r} is not in the vocabulary (is this the organism?)")
        ids.update(index[key])
    return TokenSet(name, frozenset(ids), plural)


def organism_sets(vocab: list[str]) -> list[TokenSet]:
    """The planted world's categories as token sets over `vocab` (the organism's vocabulary strings)."""
    return [_exact(name, plural, words, vocab) for name, plural, words in organism_word_lists()]


def is_organism_vocabulary(vocab: list[str]) -> bool:
    """Whether `vocab` is the organism's vocabulary (then `organism_sets` apply)."""
    from circuits.organism.tokenizer import vocabulary

    return vocab[: len(vocabulary())] == vocabulary() and len(vocab) == len(vocabulary())


# -- any BPE vocabulary ------------------------------------------------------------------------------------------


def generic_sets(vocab: list[str]) -> list[TokenSet]:
    """Sets computed from the decoded vocabulary of any model: leading space, capitalised, digits, punctuation."""
    rules = [
        ("leading space", "leading-space tokens", lambda s: len(s) > 1 and s[0] == " " and s[1:].strip() != ""),
        ("capitalised", "capitalised tokens", lambda s: s.strip()[:1].isupper()),
        ("digits", "digits", lambda s: s.strip().isdigit()),
        ("punctuation", "punctuation", lambda s: s.strip() != "" and all(not c.isalnum() and not c.isspace()
                                                                        for c in s.strip())),
    ]
    return [TokenSet(name, frozenset(i for i, s in enumerate(vocab) if rule(s)), plural)
            for name, plural, rule in rules]


def default_sets(vocab: list[str]) -> list[TokenSet]:
    """The organism's world categories for the organism's vocabulary, the generic sets for any other."""
    return organism_sets(vocab) if is_organism_vocabulary(vocab) else generic_sets(vocab)


# -- a user's file -----------------------------------------------------------------------------------------------


def read_token_set_file(path: Path) -> dict[str, list[str]]:
    """{name: [token text]} from JSON (``{"name": [...]}``) or text (one ``name: tok, tok, ...`` a line; ``#``
    starts a comment). Raises `TokenSetError` with the line that is wrong."""
    path = Path(path)
    if not path.is_file():
        raise TokenSetError(f"--token-sets {path}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise TokenSetError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict) or not all(isinstance(v, list) and all(isinstance(t, str) for t in v)
                                                 for v in data.values()):
            raise TokenSetError(f'{path}: expected {{"set name": ["token", ...], ...}}')
        out = {str(k): list(v) for k, v in data.items()}
    else:
        out = {}
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if ":" not in line:
                raise TokenSetError(f"{path} line {n}: expected 'name: token, token, ...'")
            name, toks = line.split(":", 1)
            out[name.strip()] = [t.strip() for t in toks.split(",") if t.strip()]
    empty = [k for k, v in out.items() if not k or not v]
    if not out or empty:
        raise TokenSetError(f"{path}: every set needs a name and at least one token"
                            + (f" ({empty[0]!r} has none)" if empty else ""))
    return out


def load_token_sets(path: Path, vocab: list[str], base: list[TokenSet] | None = None) -> list[TokenSet]:
    """The sets of a user's file over `vocab`, added to `base` (a set of the same name replaces the base one)."""
    user = [resolve(name, toks, vocab) for name, toks in read_token_set_file(path).items()]
    names = {s.name for s in user}
    return [s for s in (base or []) if s.name not in names] + user
