"""Indirect-object identification (Wang et al. 2022) as a case study.

"When Mary and John went to the store, John gave a drink to" → " Mary". Roles: IO (the indirect object), S1 and
S2 (the subject's two occurrences), "and", END (the last token), BOS. Metric: logit(IO) − logit(S). Prompts use the
organism's *held-out* names (never in a training IOI sentence) and, by default, its held-out templates; half ABBA
("A and B … B"), half BABA. The corrupted counterpart replaces S2 by a third name (the "ABC" distribution).

Checks: ablating the top S2 and END features lowers the metric; patching the top END attention features from the
prompt with IO and S swapped moves the answer toward the other name; and the **positional hypothesis** of Kissane et
al. (2024): does the model locate the duplicated name by absolute position or relative to "and"? We read the order
(ABBA vs BABA) off the attention-SAE codes with a linear probe trained on half of the clean prompts (difference of
class means) and test it, together with the metric, on two edits of every prompt:

* **filler**: a sentence is prepended, shifting every absolute position (the relation to "and" is unchanged);
* **no "and"**: "A and B" becomes "A, B" — every absolute position is unchanged but the "and" is gone.

If the order signal is relative to "and", it survives the filler and breaks without "and"; if it is absolute, the
reverse.
"""

from __future__ import annotations

import re
from statistics import mean

import torch

from circuits.studies.base import Study, StudyPrompt, positions_of, single_token_id
from circuits.studies.checks import AblateRoleFeatures, PatchRoleFeatures

FILLER = "It was a quiet day at the park."


def _swap(text: str, a: str, b: str) -> str:
    return re.sub(rf"\b({re.escape(a)}|{re.escape(b)})\b", lambda m: b if m.group(1) == a else a, text)


class IOIStudy(Study):
    name = "ioi"
    title = "Indirect-object identification"
    description = __doc__.split("\n\n")[1]
    roles = ("BOS", "IO", "S1", "S2", "and", "END")
    answer_label = "IO"
    wrong_label = "S"

    def __init__(self, templates: str = "heldout"):
        if templates not in ("heldout", "train", "all"):
            raise ValueError(f"templates must be 'heldout', 'train' or 'all', got {templates!r}")
        self.templates = templates

    def prompts(self, model, n: int, seed: int) -> list[StudyPrompt]:
        from circuits.organism import world as W
        from circuits.organism.corpus import ToyWorldCorpus

        corpus = ToyWorldCorpus(seed)
        sets = {"heldout": [True], "train": [False], "all": [False, True]}[self.templates]
        raw = []
        for order, count in (("ABBA", n // 2), ("BABA", n - n // 2)):
            per = [count // len(sets) + (i < count % len(sets)) for i in range(len(sets))]
            for heldout, k in zip(sets, per, strict=True):
                raw += corpus.ioi_prompts(k, order, heldout_templates=heldout)
        out = []
        for i, p in enumerate(raw):
            third = [c for c in W.IOI_HELDOUT_NAMES if c not in (p.io, p.s)][(i * 7) % (len(W.IOI_HELDOUT_NAMES) - 2)]
            head, sep, tail = p.text.rpartition(f" {p.s} ")
            a, b = (p.io, p.s) if p.order == "ABBA" else (p.s, p.io)
            pair = f"{a} and {b}"
            tset = "heldout" if p.heldout_template else "train"
            out.append(StudyPrompt(
                clean=p.text, corrupt=f"{head} {third} {tail}", answer=p.io, wrong=p.s,
                group=f"{tset}-template-{p.template}-{p.order}",
                meta={"order": p.order, "subset": f"{tset} templates {p.order}", "third": third,
                      "swapped": _swap(p.text, p.io, p.s), "filler": f"{FILLER} {p.text}",
                      "no_and": p.text.replace(pair, f"{a}, {b}", 1)}))
        # interleave ABBA and BABA so that any prefix of the dataset is balanced
        abba = [p for p in out if p.meta["order"] == "ABBA"]
        baba = [p for p in out if p.meta["order"] == "BABA"]
        mixed = [p for pair in zip(abba, baba, strict=False) for p in pair]
        return mixed + abba[len(baba):] + baba[len(abba):]

    def assign_roles(self, model, prompt: StudyPrompt, tokens: list[int]) -> list[str]:
        roles = self.bos_end_roles(len(tokens))
        io, s = single_token_id(model, prompt.answer), single_token_id(model, prompt.wrong)
        io_pos, s_pos = positions_of(tokens, io), positions_of(tokens, s)
        if len(io_pos) != 1 or len(s_pos) != 2:
            raise ValueError(f"IOI prompt {prompt.clean!r}: expected IO once and S twice")
        roles[io_pos[0]], roles[s_pos[0]], roles[s_pos[1]] = "IO", "S1", "S2"
        first = min(io_pos[0], s_pos[0])
        if first + 1 < len(tokens) and tokens[first + 1] == single_token_id(model, "and"):
            roles[first + 1] = "and"
        return roles

    def checks(self) -> list:
        return [AblateRoleFeatures("S2", 10), AblateRoleFeatures("END", 10),
                PatchRoleFeatures("END", "attn_feature", 10, source="swapped",
                                  source_label="the prompt with IO and S swapped"),
                PositionalCheck()]


def _attn_codes(rm, cache, pos: int) -> dict[int, float]:
    """Sparse concatenation of every attention SAE's codes at `pos` (index = layer·d_sae + feature)."""
    out = {}
    for layer, d in sorted(rm.attention_saes.items()):
        c = cache.codes[d.cfg.name][pos]
        for i in torch.nonzero(c).flatten().tolist():
            out[layer * d.d_sae + i] = float(c[i])
    return out


class PositionalCheck:
    name = "positional"
    title = "Positional hypothesis: absolute position or relative to 'and'?"
    variants = ("clean", "filler", "no_and")

    @torch.no_grad()
    def run(self, rm, cache, pp, ablation, context: dict) -> dict:
        out: dict = {"order": pp.prompt.meta["order"], "index": pp.index}
        s2 = pp.roles.index("S2")
        for v in self.variants:
            c = cache if v == "clean" else rm.run(rm.tokenize(pp.prompt.meta[v]))
            shift = c.n_pos - cache.n_pos  # the filler shifts every position by its length
            out[v] = {"metric": float(pp.metric(c.logits)), "END": _attn_codes(rm, c, c.n_pos - 1),
                      "S2": _attn_codes(rm, c, s2 + shift)}
        return out

    def summarize(self, rows: list[dict]) -> dict:
        res: dict = {"title": self.title,
                     "how": "probe = difference of mean attention-SAE codes (all layers, concatenated) between ABBA "
                            "and BABA prompts, trained on half the clean prompts (alternate pairs), threshold at the midpoint; "
                            "accuracy on the other half, clean and edited. 'filler' prepends "
                            f"{FILLER!r} (absolute positions shift); 'no_and' turns 'A and B' into 'A, B' "
                            "(absolute positions kept, 'and' removed)."}
        for v in self.variants:
            ms = [r[v]["metric"] for r in rows]
            res[f"{v}_metric_mean"] = mean(ms)
            res[f"{v}_accuracy"] = mean(float(m > 0) for m in ms)
        # prompts alternate ABBA, BABA: split by pairs so that both halves hold both orders
        train = [r for r in rows if r["index"] % 4 < 2]
        test = [r for r in rows if r["index"] % 4 >= 2] or train
        for where in ("S2", "END"):
            def avg(rs, where=where):
                acc: dict[int, float] = {}
                for r in rs:
                    for k, x in r["clean"][where].items():
                        acc[k] = acc.get(k, 0.0) + x / len(rs)
                return acc
            a = avg([r for r in train if r["order"] == "ABBA"])
            b = avg([r for r in train if r["order"] == "BABA"])
            keys = set(a) | set(b)
            w = {k: a.get(k, 0.0) - b.get(k, 0.0) for k in keys}
            mid = (sum(w[k] * a.get(k, 0.0) for k in keys) + sum(w[k] * b.get(k, 0.0) for k in keys)) / 2

            def acc_on(variant: str, w=w, mid=mid, where=where) -> float:
                hits = [float((sum(w.get(k, 0.0) * x for k, x in r[variant][where].items()) > mid)
                              == (r["order"] == "ABBA")) for r in test]
                return mean(hits) if hits else float("nan")
            for v in self.variants:
                res[f"probe_{where}_{v}"] = acc_on(v)
        f, na = res["probe_S2_filler"], res["probe_S2_no_and"]
        c = res["probe_S2_clean"]
        if c < 0.75:
            res["verdict"] = "inconclusive: order is not linearly readable at S2 on clean prompts"
        elif f >= c - 0.1 and na < c - 0.2:
            res["verdict"] = "relative to 'and' (order survives the filler, breaks without 'and')"
        elif na >= c - 0.1 and f < c - 0.2:
            res["verdict"] = "absolute position (order survives removing 'and', breaks with the filler)"
        elif f >= c - 0.1 and na >= c - 0.1:
            res["verdict"] = "neither edit breaks it: the order signal uses other cues (e.g. token order itself)"
        else:
            res["verdict"] = "mixed: both edits degrade the order signal"
        return res
