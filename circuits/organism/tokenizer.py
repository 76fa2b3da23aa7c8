"""A word-level tokenizer for the toy world, built in code and saved as a Hugging Face tokenizer folder.

Rules (GPT-2-like, so prompts read the same on the organism and on GPT-2):

* every word carries its leading space, and the text is given one leading space first, so "When Mary" is
  ``[" When", " Mary"]`` wherever it occurs;
* case is kept (" The" and " the" are different tokens); each punctuation mark is its own token (",", ".");
* numbers split into two-digit pieces: "1732" is ``[" 17", "32"]`` (the greater-than task reads the century,
  then predicts the two-digit year);
* anything outside the vocabulary becomes ``<|unk|>``; ``<|endoftext|>`` is BOS, EOS and the document separator.

The vocabulary is the closed set of words the corpus can produce (world entities + template words), plus every
two-digit number with and without a leading space. Decoding concatenates tokens, so ``decode(encode(t)) == " " + t``
for in-vocabulary text.
"""

from __future__ import annotations

import re
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

BOS = "<|endoftext|>"
PAD = "<|pad|>"
UNK = "<|unk|>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS, PAD, UNK)
#: Tokens the organism is never trained to predict: every training row is BOS followed by text, with no padding and
#: no unknown pieces, so no special token is ever a target. Their unembeddings were only ever pushed down, and what a
#: feature does to their logits means nothing for its behaviour; dashboards leave them out of promote/suppress lists.
NEVER_PREDICTED: tuple[str, ...] = SPECIAL_TOKENS

#: One pre-token per match; each pre-token is exactly one vocabulary entry.
PRETOKEN_PATTERN = r" ?[A-Za-z]+| ?[0-9]{1,2}|[^\sA-Za-z0-9]| +"
_PRETOKEN_RE = re.compile(PRETOKEN_PATTERN)


def pretokenize(text: str) -> list[str]:
    """Split text into the pieces the tokenizer maps to ids (after prepending one space)."""
    return _PRETOKEN_RE.findall(" " + text)


def vocabulary() -> list[str]:
    """The organism's vocabulary in id order: special tokens, then sorted corpus pieces and number pieces."""
    from circuits.organism.templates import all_corpus_words

    pieces: set[str] = set()
    for word in all_corpus_words():
        if re.fullmatch(r"[^\sA-Za-z0-9]", word):
            pieces.add(word)
        else:
            pieces.add(" " + word)
    for i in range(100):
        pieces.add(f"{i:02d}")
        pieces.add(f" {i:02d}")
    return list(SPECIAL_TOKENS) + sorted(pieces)


def build_tokenizer() -> Tokenizer:
    """The raw `tokenizers.Tokenizer` (fast, used for corpus encoding)."""
    vocab = {tok: i for i, tok in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Prepend(" ")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PRETOKEN_PATTERN), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def save_tokenizer(folder: Path) -> Path:
    """Save as a `transformers` tokenizer folder (tokenizer.json + configs) that loads offline."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(),
        bos_token=BOS,
        eos_token=BOS,
        unk_token=UNK,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return folder


def load_tokenizer(folder: Path):
    """Load a saved tokenizer folder with `transformers`, offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
