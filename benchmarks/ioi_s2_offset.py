"""Does layer-0 head L0H4 follow S2 or a fixed offset from END? ``python benchmarks/ioi_s2_offset.py [--n 200]``

The IOI head analysis names L0H4 "moves S2 to END": from END it attends S2, and ablating it or patching it from
the ABC prompt removes most of the logit difference. Every held-out template puts S2 four tokens before END, so
attention to "the name in S2's slot" and attention to "the token at END − 4" cannot be told apart on those prompts.
This script moves S2 away from that offset and looks again, on fresh prompts (held-out names and templates, seed 21;
reference prompts for the ablation means, seed 22):

* **one / two words inserted** right after S2 (``…, John then gave a drink to``; words of the organism's noise pool,
  `templates.noise_words()`, which holds no name and no held-out-only word, pronouns removed): S2 is END − 5 /
  END − 6, and END − 4 is an inserted word. The organism saw such insertions in training (phase-4 noise).
* **ABC** and **ABC, one word inserted**: S2 replaced by a third name (the study's corrupted prompt): is the name
  in S2's slot attended when no name is repeated?
* **pronoun**: S2 replaced by "he" / "she" and one word inserted after it: no name in S2's slot, so the latest name
  is the second of "A and B", about ten tokens back. Is it the *latest name* the head attends, or the last clause's
  subject (the pronoun), or neither? (Attention only; added after a review, before the n = 200 run.)

Measured on each form (mean over prompts, 95% bootstrap intervals):

1. L0H4's attention from END to the name in S2's slot (S2, or the third name) and to the token at END − 4;
2. the logit difference m = logit(IO) − logit(S);
3. (forms with S2) the drop of m when L0H4's z at END is replaced by its mean at END over reference prompts of the
   same form, against the same ablation of each other layer-0 head (leave-one-out mean: the baseline the head
   analysis uses for direct effects).

Verdict, fixed before the run: where S2 is not at END − 4, L0H4 **follows the name** if its attention to the name
is at least 0.5 and its ablation drop has an interval above the other layer-0 heads' and above 10% of those prompts'
m; it **keys on the offset** if its attention to the END − 4 word is at least 0.5; otherwise inconclusive. On the
ABC prompts with a word inserted (no preference left to ablate) the attention rule alone.

What it shows and what it does not: the attention rows say where the head reads (the name, not the token at
END − 4); the ablation rows say that it still carries the effect when S2 moves — an ablation alone could not tell a
name-keyed head from an offset-keyed one. In every IOI prompt here the name in S2's slot is also the latest name
and the subject of the last clause; the pronoun form separates them. (Rule for the one-word form written before a
20-prompt pilot; the ABC rows were added after the pilot, the two-word and pronoun rows after a review, all before
the n = 200 runs.)
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch

HEAD = (0, 4)
PRONOUNS = {"he", "she", "him", "her", "his", "hers", "they", "them", "their", "it", "its", "i", "me", "we", "us",
            "you"}
SEEDS = (21, 22)  # evaluation, reference: seeds no study or benchmark uses


def insert_after_s2(text: str, s: str, word: str) -> str:
    head, _, tail = text.rpartition(f" {s} ")
    return f"{head} {s} {word} {tail}"


def offset_verdict(name_att: float, offset_att: float, effect=None, baseline=None, minimum: float = 0.0) -> str:
    """The verdict rule of the module docstring for prompts where S2's slot is *not* END − 4: attention
    means (`name_att` to the name, `offset_att` to END − 4) and, where there is a preference to remove, the
    ablation's drop `effect` and the other heads' `baseline` (`stats.Interval`s)."""
    causal_ok = effect is None or (effect.lo > baseline.hi and effect.lo >= minimum)
    if name_att >= 0.5 and causal_ok:  # where it reads moved with the name, and it still carries the effect
        return "follows the name"
    if offset_att >= 0.5:
        return "keys on the offset"
    return "inconclusive"


def build(model, n: int, seed: int) -> list[dict]:
    """Prompt texts of every form of the module docstring from the study's held-out prompts; a prompt is kept only
    if, in every form, the name (or pronoun) in S2's slot sits where the form puts it (END − 4, − 5 or − 6)."""
    from circuits.organism import templates
    from circuits.studies.base import single_token_id
    from circuits.studies.ioi import IOIStudy

    words = [w for w in templates.noise_words()[0] if w not in PRONOUNS]  # a pronoun might stand for a name
    rng = random.Random(f"s2-offset-{seed}")
    out = []
    for p in IOIStudy().prompts(model, n, seed):
        io, s, third = p.answer, p.wrong, p.meta["third"]
        word, second = rng.sample(words, 2)
        row = {"io": io, "s": s, "third": third, "clean": p.clean, "inserted": insert_after_s2(p.clean, s, word),
               "inserted 2": insert_after_s2(p.clean, s, f"{word} {second}"),
               "abc": p.corrupt, "abc inserted": insert_after_s2(p.corrupt, third, word),
               "pronoun": insert_after_s2(p.clean, s, word).replace(f" {s} {word} ", f" {rng.choice(('he', 'she'))} "
                                                                                   f"{word} ", 1)}
        ok = model.to_tokens(row["pronoun"])[0][-6].item() in {single_token_id(model, w) for w in ("he", "she")}
        for form, name, back in (("clean", s, 5), ("inserted", s, 6), ("inserted 2", s, 7), ("abc", third, 5),
                                 ("abc inserted", third, 6)):
            tok = model.to_tokens(row[form])[0]
            ok &= tok[-back].item() == single_token_id(model, name)
        if ok:
            out.append(row)
    return out


@torch.no_grad()
def pronoun_attention(model, rows: list[dict], head: tuple[int, int]) -> dict[str, np.ndarray]:
    """On the "pronoun" form (S2 replaced by "he" or "she", one word inserted after it: the pronoun at END − 5, the
    word at END − 4, and the latest name the second name of "A and B"): the head's attention from END to the latest
    name, to both names, to the pronoun (the subject of the last clause), to END − 4 and to BOS, per prompt."""
    from circuits.model import hook_attn_pattern
    from circuits.studies.base import single_token_id

    layer, h = head
    out: dict[str, list[float]] = {k: [] for k in ("latest name", "both names", "pronoun", "END−4", "BOS")}
    for r in rows:
        tok = model.to_tokens(r["pronoun"])
        names = {single_token_id(model, r["io"]), single_token_id(model, r["s"])}
        last_name = max(i for i, t in enumerate(tok[0].tolist()) if t in names)
        _, cache = model.run_with_cache(tok, names_filter=hook_attn_pattern(layer))
        pat = cache[hook_attn_pattern(layer)][0, h, -1]
        T = tok.shape[1]
        both = [i for i, t in enumerate(tok[0].tolist()) if t in names]
        for key, value in (("latest name", pat[last_name]), ("both names", pat[both].sum()), ("pronoun", pat[T - 6]),
                           ("END−4", pat[T - 5]), ("BOS", pat[0])):
            out[key].append(float(value))
    return {k: np.array(v) for k, v in out.items()}


@torch.no_grad()
def measure(model, rows: list[dict], form: str, mean_z: torch.Tensor | None):
    """Per prompt of `form`: attention from END to the name in S2's slot (S2, or the third name of an ABC form) and to
    END − 4, of every layer-0 head [n, H] each; m [n]; the mean of layer 0's z at END [H, d_head]; and, given a
    reference `mean_z`, m with each layer-0 head's z at END replaced by it [n, H]."""
    from circuits.model import hook_attn_pattern, hook_attn_z
    from circuits.studies.base import single_token_id

    H = model.cfg.n_heads
    att_name, att_off, m, m_abl, z_end = [], [], [], [], []
    for r in rows:
        tok = model.to_tokens(r[form])
        a, b = single_token_id(model, r["io"]), single_token_id(model, r["s"])
        latest = single_token_id(model, r["third"] if form.startswith("abc") else r["s"])
        logits, cache = model.run_with_cache(tok, names_filter=lambda n: n in (hook_attn_pattern(0), hook_attn_z(0)))
        pat = cache[hook_attn_pattern(0)][0, :, -1]  # [H, key]
        att_name.append(pat[:, int((tok[0] == latest).nonzero().max())])
        att_off.append(pat[:, tok.shape[1] - 5])
        m.append(float(logits[0, -1, a] - logits[0, -1, b]))
        z_end.append(cache[hook_attn_z(0)][0, -1])  # [H, d_head]
        if mean_z is not None:
            row = []
            for h in range(H):
                def hook(z, hook, h=h):
                    z[0, -1, h] = mean_z[h]
                    return z

                out = model.run_with_hooks(tok, fwd_hooks=[(hook_attn_z(0), hook)])
                row.append(float(out[0, -1, a] - out[0, -1, b]))
            m_abl.append(row)
    return (torch.stack(att_name).double().numpy(), torch.stack(att_off).double().numpy(), np.array(m),
            np.array(m_abl) if m_abl else None, torch.stack(z_end).mean(0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = ap.parse_args()

    from circuits import load_model
    from circuits.studies.stats import MIN_EFFECT_SHARE, mean_interval

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model, _ = load_model("organism")
    ev, ref = (build(model, args.n, s) for s in SEEDS)
    layer, head = HEAD
    H = model.cfg.n_heads
    others = [h for h in range(H) if h != head]
    print(f"{len(ev)} evaluation and {len(ref)} reference prompts of {args.n} kept\n")
    print(f"| prompts | L0H{head} END→name in S2's slot | L0H{head} END→(END−4) | m | L0H{head} ablated at END: drop of m "
          "| other layer-0 heads: mean drop | verdict |")
    print("|---|---|---|---|---|---|---|")
    forms = {"clean": "clean (S2 at END−4)", "inserted": "one word inserted (S2 at END−5)",
             "inserted 2": "two words inserted (S2 at END−6)",
             "abc": "ABC (a third name at END−4, no repeated name)", "abc inserted": "ABC, one word inserted (END−5)"}
    verdicts = {}
    for form, title in forms.items():
        causal = not form.startswith("abc")  # ABC prompts have no IO/S preference left to remove
        mean_z = measure(model, ref, form, None)[4] if causal else None
        att, off, m, m_abl, _ = measure(model, ev, form, mean_z)
        name_iv, off_iv = mean_interval(att[:, head], args.seed), mean_interval(off[:, head], args.seed)
        cells = ["—", "—"]
        if causal:
            drop = m[:, None] - m_abl  # [n, H]
            eff, base = mean_interval(drop[:, head], args.seed), mean_interval(drop[:, others].mean(1), args.seed)
            minimum = MIN_EFFECT_SHARE * abs(float(m.mean()))
            cells = [f"{eff}", f"{base}"]
        if form in ("clean", "abc"):
            word = "— (the name is END−4: cannot tell)"
        else:
            word = offset_verdict(name_iv.value, off_iv.value, *((eff, base, minimum) if causal else ()))
            word += f" (minimum {minimum:.2f})" if causal else ""
        verdicts[form] = word
        print(f"| {title} | {name_iv} | {off_iv} | {mean_interval(m, args.seed)} | {cells[0]} | {cells[1]} | "
              f"{word} |")
    where = pronoun_attention(model, ev, HEAD)
    print(f"\nS2 replaced by 'he' / 'she' and one word inserted after it (no name in S2's slot; the pronoun at END−5): "
          f"L0H{head}'s attention from END — " + "; ".join(f"{k} {mean_interval(v, args.seed)}"
                                                         for k, v in where.items()))
    print(f"\nL0H{head} with one / two words inserted: {verdicts['inserted']} / {verdicts['inserted 2']}; on the "
          f"ABC prompts with one word inserted: {verdicts['abc inserted']}; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
