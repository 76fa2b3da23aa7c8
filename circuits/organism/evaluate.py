"""Behaviour evaluation of a model on the toy world's held-out splits.

Every number is computed from next-token logits at the last prompt position (BOS prepended):

* IOI: accuracy = P(logit[IO] > logit[S]); logit difference = logit[IO] − logit[S]; per order (ABBA/BABA), on
  unseen name pairs (two held-out names) with training templates, and with held-out templates;
* induction: top-1 accuracy on the second copy of a fresh random span, positions 2..L of the copy;
* facts: top-1 accuracy of one-hop recall; two-hop top-1 on questions seen / never seen in training;
* greater-than: probability mass on two-digit tokens strictly greater than the start year (mean over prompts);
* successor and pronoun: top-1 accuracy (pronoun also logit difference he/she);
* cross-entropy (nats/token) on held-out corpus rows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from circuits.organism import world as W
from circuits.organism.corpus import ToyWorldCorpus


@dataclass(frozen=True)
class EvalSizes:
    """How many prompts each family uses; `subsample` shrinks all of them (for tests)."""

    ioi: int = 400
    induction: int = 200
    successor: int = 200
    pronoun: int = 200
    heldout_rows: int = 128

    def scaled(self, factor: float) -> EvalSizes:
        return EvalSizes(*(max(8, int(v * factor)) for v in (self.ioi, self.induction, self.successor,
                                                              self.pronoun, self.heldout_rows)))


def _tok_id(model, token: str) -> int:
    """The id of one vocabulary entry, given exactly as stored (" Mary" with its space, "32" without)."""
    tid = model.tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == model.tokenizer.unk_token_id:
        raise ValueError(f"{token!r} is not a single token of this model")
    return int(tid)


@torch.no_grad()
def last_logits(model, texts: list[str], batch: int = 64, hooks=None) -> torch.Tensor:
    """[n, d_vocab] logits at each prompt's last token (prompts of different lengths are padded right).

    `hooks`: optional TransformerLens forward hooks to run with (e.g. a dictionary splice)."""
    out = []
    for i in range(0, len(texts), batch):
        pad, lengths = padded_tokens(model, texts[i: i + batch])
        logits = model.run_with_hooks(pad, fwd_hooks=hooks) if hooks else model(pad)
        out.append(logits[torch.arange(len(lengths)), lengths - 1])
    return torch.cat(out)


def padded_tokens(model, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n, max_len] padded right with 0, lengths [n]) for prompts of different lengths (BOS prepended)."""
    toks = [model.to_tokens(t)[0] for t in texts]
    lengths = torch.tensor([len(t) for t in toks])
    pad = torch.zeros(len(toks), int(lengths.max()), dtype=torch.long)
    for j, t in enumerate(toks):
        pad[j, : len(t)] = t
    return pad, lengths


def ioi_logit_diffs(model, prompts, hooks=None) -> torch.Tensor:
    """[n] logit(IO) − logit(S) at the last position of each IOI prompt."""
    logits = last_logits(model, [p.text for p in prompts], hooks=hooks)
    io = torch.tensor([_tok_id(model, " " + p.io) for p in prompts])
    s = torch.tensor([_tok_id(model, " " + p.s) for p in prompts])
    idx = torch.arange(len(prompts))
    return logits[idx, io] - logits[idx, s]


def eval_ioi(model, corpus: ToyWorldCorpus, n: int) -> dict:
    res = {}
    for heldout_t in (False, True):
        for order in ("ABBA", "BABA"):
            prompts = corpus.ioi_prompts(n, order, heldout_templates=heldout_t)
            ld = ioi_logit_diffs(model, prompts)
            key = f"ioi_{'heldout_templates' if heldout_t else 'train_templates'}_{order}"
            res[key] = {"accuracy": (ld > 0).float().mean().item(), "logit_diff": ld.mean().item(), "n": n}
    return res


@torch.no_grad()
def eval_induction(model, corpus: ToyWorldCorpus, n: int, length: int = 10) -> dict:
    prompts = corpus.induction_prompts(n, length)
    toks = torch.stack([model.to_tokens(" ".join(p.words + p.words))[0] for p in prompts])
    logits = model(toks)
    # tokens: BOS, copy1 (1..L), copy2 (L+1..2L). Predict copy2[k] (k>=1) from position L+k.
    pred = logits[:, length + 1: 2 * length].argmax(-1)
    target = toks[:, length + 2: 2 * length + 1]
    first_copy_pred = logits[:, 1:length].argmax(-1)
    return {"induction": {"top1": (pred == target).float().mean().item(),
                          "top1_first_copy": (first_copy_pred == toks[:, 2: length + 1]).float().mean().item(),
                          "n": n, "span_length": length}}


def _top1(model, prompts) -> dict:
    logits = last_logits(model, [p.text for p in prompts])
    answers = torch.tensor([_tok_id(model, " " + p.answer) for p in prompts])
    correct = logits.argmax(-1) == answers
    return {"top1": correct.float().mean().item(), "n": len(prompts)}


def eval_facts(model, corpus: ToyWorldCorpus) -> dict:
    return {"one_hop": _top1(model, corpus.fact_prompts()),
            "two_hop_seen": _top1(model, corpus.two_hop_prompts(heldout=False)),
            "two_hop_unseen": _top1(model, corpus.two_hop_prompts(heldout=True))}


def eval_greater_than(model, corpus: ToyWorldCorpus) -> dict:
    prompts = corpus.greater_than_prompts()
    probs = last_logits(model, [p.text for p in prompts]).softmax(-1)
    digit_ids = torch.tensor([model.tokenizer.convert_tokens_to_ids(d) for d in W.TWO_DIGITS])  # "32", no space
    two = probs[:, digit_ids]  # [n, 100]
    greater = torch.stack([two[i, p.start + 1:].sum() for i, p in enumerate(prompts)])
    return {"greater_than": {"prob_greater": greater.mean().item(), "prob_two_digit": two.sum(-1).mean().item(),
                             "n": len(prompts)}}


def eval_successor(model, corpus: ToyWorldCorpus, n: int) -> dict:
    return {"successor": _top1(model, corpus.successor_prompts(n))}


def eval_pronoun(model, corpus: ToyWorldCorpus, n: int) -> dict:
    prompts = corpus.pronoun_prompts(n)
    logits = last_logits(model, [p.text for p in prompts])
    right = torch.tensor([_tok_id(model, " " + p.answer) for p in prompts])
    wrong = torch.tensor([_tok_id(model, " " + p.contrast) for p in prompts])
    idx = torch.arange(len(prompts))
    ld = logits[idx, right] - logits[idx, wrong]
    return {"pronoun": {"accuracy": (ld > 0).float().mean().item(), "logit_diff": ld.mean().item(), "n": n}}


@torch.no_grad()
def eval_heldout_ce(model, corpus: ToyWorldCorpus, n_rows: int) -> dict:
    from circuits.organism.tokenizer import build_tokenizer
    from circuits.organism.train import batch_tokens

    toks = batch_tokens(corpus, build_tokenizer(), 0, n_rows, model.cfg.n_ctx, stream="heldout")
    losses = [model(toks[i: i + 32], return_type="loss").item() for i in range(0, n_rows, 32)]
    return {"heldout_ce": {"nats_per_token": sum(losses) / len(losses), "rows": n_rows}}


#: The organism's behaviour targets, (family, metric) -> the least value that meets it (docs/organism.md's table).
#: Families and metrics not listed are reported without a target (two-hop on unseen questions, successor, pronoun,
#: held-out cross-entropy).
TARGETS: dict[tuple[str, str], float] = {
    **{(f"ioi_train_templates_{o}", m): v for o in ("ABBA", "BABA") for m, v in (("accuracy", 0.95),
                                                                                ("logit_diff", 3.0))},
    **{(f"ioi_heldout_templates_{o}", "accuracy"): 0.85 for o in ("ABBA", "BABA")},
    ("induction", "top1"): 0.90,
    ("one_hop", "top1"): 0.95,
    ("two_hop_seen", "top1"): 0.90,
    ("greater_than", "prob_greater"): 0.80,
}

#: Prompt counts of the subsample that tests re-evaluate against ``eval.json["ci_subsample"]``.
CI_SIZES = EvalSizes().scaled(0.05)


def evaluate_organism(model, seed: int = 0, sizes: EvalSizes = EvalSizes(), progress: bool = False) -> dict:
    """All behaviour metrics as one nested dict (the content of ``data/organism/eval.json``)."""
    from tqdm.auto import tqdm

    corpus = ToyWorldCorpus(seed)
    steps = [
        ("ioi", lambda: eval_ioi(model, corpus, sizes.ioi)),
        ("induction", lambda: eval_induction(model, corpus, sizes.induction)),
        ("facts", lambda: eval_facts(model, corpus)),
        ("greater_than", lambda: eval_greater_than(model, corpus)),
        ("successor", lambda: eval_successor(model, corpus, sizes.successor)),
        ("pronoun", lambda: eval_pronoun(model, corpus, sizes.pronoun)),
        ("heldout_ce", lambda: eval_heldout_ce(model, corpus, sizes.heldout_rows)),
    ]
    res: dict = {}
    for _, fn in tqdm(steps, desc="eval", disable=not progress):
        res.update(fn())
    return res


def write_eval(res: dict, path: Path, with_ci_subsample: bool = False, model=None) -> None:
    """Write eval JSON atomically; optionally add the CI subsample numbers that tests reproduce."""
    out = dict(res)
    if with_ci_subsample:
        out["ci_subsample"] = {"sizes": asdict(CI_SIZES), "results": evaluate_organism(model, sizes=CI_SIZES)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    tmp.replace(path)


def quick_eval(model) -> dict:
    """A few headline numbers for training logs."""
    corpus = ToyWorldCorpus(0)
    was_training = model.training
    model.eval()
    r = eval_ioi(model, corpus, 64)
    r.update(eval_induction(model, corpus, 64))
    r.update(eval_facts(model, corpus))
    r.update(eval_greater_than(model, corpus))
    model.train(was_training)
    flat = {}
    for k, v in r.items():
        for kk, vv in v.items():
            if kk != "n" and kk != "span_length":
                flat[f"{k}.{kk}"] = round(vv, 4)
    return flat
