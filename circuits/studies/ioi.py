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
reverse. Each edit's effect is the paired drop in probe accuracy (clean − edited, per test prompt) with a bootstrap
interval: an edit "degrades" the signal when the interval lies above 0 and the drop is at least 10 points, and
"keeps" it when the whole interval lies below a 10-point drop; otherwise the verdict is inconclusive.

**Test set.** Prompts from templates that share no structure with the training or held-out ones (`TEST_TEMPLATES`:
names as objects, another clause order, longer distances, other connectives), on held-out names, from a seed
reserved for them; scored with the circuit chosen on the selection prompts and reported separately. They were
written and checked to tokenize before any result on them was looked at, and nothing was tuned on them.
"""

from __future__ import annotations

import importlib.util
import random
import re
from statistics import mean

import numpy as np
import torch

from circuits.studies import stats
from circuits.studies.base import MIN_GROUP, Study, StudyPrompt, disjoint_sets, positions_of, single_token_id
from circuits.studies.checks import AblateRoleFeatures, PatchRoleFeatures

FILLER = "It was a quiet day at the park."
QK_PROMPTS = 160  # evaluation prompts of the QK section: half rank the removal check's nodes, half test it

# The test set's templates (never used while developing the study): names out of subject position, another clause
# order, a longer IO–S2 distance, other connectives. Every word is in the organism's vocabulary (tested).
TEST_TEMPLATES: tuple[str, ...] = (
    "The {object} was for {A} and {B} at the {place}, so {S} gave it to",
    "It was {day} and {A} and {B} went to the {place}. {S} sent a {object} to",
    "When {A} and {B} went to the {place} on {day} and talked for a long time at the old {place}, {S} gave a "
    "{object} to",
    "{A} and {B} were at the {place}, so {S} handed a {object} to",
)


def _swap(text: str, a: str, b: str) -> str:
    return re.sub(rf"\b({re.escape(a)}|{re.escape(b)})\b", lambda m: b if m.group(1) == a else a, text)


class IOIStudy(Study):
    name = "ioi"
    title = "Indirect-object identification"
    description = __doc__.split("\n\n")[1]
    roles = ("BOS", "IO", "S1", "S2", "and", "END")
    answer_label = "IO"
    wrong_label = "S"

    test_description = ("structurally new templates (names as objects, another clause order, a longer IO–S2 "
                        "distance, other connectives) on held-out names, from a reserved seed")

    def __init__(self, templates: str = "heldout", template_texts: tuple[str, ...] | None = None):
        """`templates`: which template split the prompts come from; `template_texts` replaces that split's template
        list while keeping its random stream (`ToyWorldCorpus.ioi_prompts`; word-swap diagnostics)."""
        if templates not in ("heldout", "train", "all"):
            raise ValueError(f"templates must be 'heldout', 'train' or 'all', got {templates!r}")
        if template_texts is not None and templates == "all":
            raise ValueError("template_texts replaces one split's templates: use templates='heldout' or 'train'")
        self.templates = templates
        self.template_texts = template_texts

    def test_sets(self, model, n: int, seed: int) -> dict[str, list[StudyPrompt]]:
        groups = 2 * len(TEST_TEMPLATES)
        return disjoint_sets(self, model, {"test": max(groups, n // 2), "test_reference": max(n, MIN_GROUP * groups)},
                             seed, generate=self.test_prompts)

    def test_prompts(self, model, n: int, seed: int) -> list[StudyPrompt]:
        """Prompts from `TEST_TEMPLATES`, balanced over templates and name orders (held-out names)."""
        from circuits.organism import world as W

        rng = random.Random(f"ioi-test-{seed}")
        out = []
        for i in range(n):
            t, order = (i // 2) % len(TEST_TEMPLATES), ("ABBA", "BABA")[i % 2]
            io, s = rng.sample(W.IOI_HELDOUT_NAMES, 2)
            a, b = (io, s) if order == "ABBA" else (s, io)
            text = TEST_TEMPLATES[t].format(A=a, B=b, S=s, place=rng.choice(W.PLACES), object=rng.choice(W.OBJECTS),
                                            day=rng.choice(W.DAYS))
            out.append(self._prompt(text, io, s, order, f"test-template-{t}-{order}", f"test templates {order}", i))
        return out

    def _prompt(self, text: str, io: str, s: str, order: str, group: str, subset: str, i: int) -> StudyPrompt:
        from circuits.organism import world as W

        third = [c for c in W.IOI_HELDOUT_NAMES if c not in (io, s)][(i * 7) % (len(W.IOI_HELDOUT_NAMES) - 2)]
        head, _, tail = text.rpartition(f" {s} ")
        a, b = (io, s) if order == "ABBA" else (s, io)
        pair = f"{a} and {b}"
        return StudyPrompt(clean=text, corrupt=f"{head} {third} {tail}", answer=io, wrong=s, group=group,
                           meta={"order": order, "subset": subset, "third": third, "swapped": _swap(text, io, s),
                                 "filler": f"{FILLER} {text}", "no_and": text.replace(pair, f"{a}, {b}", 1),
                                 "control": _control_edit(text)})

    def head_analysis(self, rm, evaluation: list, reference: list, seed: int,
                      selection: list | None = None, workers: int = 1) -> dict | None:
        """The per-head component analysis (`circuits.studies.heads`, when that module exists): called by the
        runner with the evaluation and reference `PreparedPrompt` lists; its result goes to the report as
        ``data["heads"]`` and is rendered by `heads.render_head_section`. It gets the ReplacementModel, so that it
        also reports which attention-SAE features of each role head carry the head's effect (issue 17 item 5).

        Roles are assigned and judged on the evaluation prompts, every head tested several ways; with `selection`
        (the study's selection prompts, disjoint from them) the whole analysis runs again there and each role's
        head is marked replicated or not (`heads.replication`): a role claimed on one set by chance among 32 heads
        is unlikely to pass on the other.

        With ``workers > 1`` the replication runs beside the main analysis on its own copy of the model
        (`attribution.workers.map_with_model_copies`): the same numbers as one after the other in a study (one torch
        thread), on two cores; the replication's prompts are half as many, and a quarter to a third of the head
        analysis' time was saved (27 s → 21 s on 40 + 20 prompts, 148 s → 95 s in the n = 200 study)."""
        if importlib.util.find_spec("circuits.studies.heads") is None:
            return None
        from circuits.studies import heads

        if not selection:
            return heads.ioi_head_analysis(rm, evaluation, reference, seed)
        from circuits.attribution.workers import map_with_model_copies

        found, again = map_with_model_copies(lambda m, prompts: heads.ioi_head_analysis(m, prompts, reference, seed),
                                             [evaluation, selection], rm, workers)
        found["replication"] = heads.replication(found, again, len(selection))
        return found

    def qk_analysis(self, rm, evaluation: list, head_data: dict | None, seed: int, workers: int = 1) -> dict | None:
        """The QK decomposition (`circuits.studies.qk_section`) of the role heads of the head analysis that attend
        from END to the names: their END→IO versus END→S2 preference (and END→IO versus END→S1 for a head that
        attends IO at least as much as S2; `qk_section.ioi_heads`), on the first `QK_PROMPTS` evaluation prompts (half
        rank the removal check's nodes, half test it; ABBA and BABA alternate, so each half is balanced)."""
        from circuits.studies.qk_section import ioi_heads, qk_section

        chosen = ioi_heads(head_data)
        if not chosen:
            return None
        return qk_section(rm, evaluation, chosen, seed, n_prompts=QK_PROMPTS, workers=workers)

    def prompts(self, model, n: int, seed: int) -> list[StudyPrompt]:
        from circuits.organism.corpus import ToyWorldCorpus

        corpus = ToyWorldCorpus(seed)
        sets = {"heldout": [True], "train": [False], "all": [False, True]}[self.templates]
        raw = []
        for order, count in (("ABBA", n // 2), ("BABA", n - n // 2)):
            per = [count // len(sets) + (i < count % len(sets)) for i in range(len(sets))]
            for heldout, k in zip(sets, per, strict=True):
                raw += corpus.ioi_prompts(k, order, heldout_templates=heldout, templates=self.template_texts)
        out = []
        for i, p in enumerate(raw):
            tset = "heldout" if p.heldout_template else "train"
            out.append(self._prompt(p.text, p.io, p.s, p.order, f"{tset}-template-{p.template}-{p.order}",
                                    f"{tset} templates {p.order}", i))
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


def _control_edit(text: str) -> str:
    """The positional check's negative control: the prompt with its first place or object word swapped for the
    next one of the same list (one token for one: positions, names and 'and' stay), an edit that should not move
    the name-order signal. The text unchanged when it has no such word."""
    from circuits.organism import world as W

    words = text.split(" ")
    for pool in (W.PLACES, W.OBJECTS):
        for i, w in enumerate(words):
            bare = w.rstrip(",.")
            if bare in pool:
                words[i] = pool[(pool.index(bare) + 1) % len(pool)] + w[len(bare):]
                return " ".join(words)
    return text


class PositionalCheck:
    name = "positional"
    title = "Positional hypothesis: absolute position or relative to 'and'?"
    variants = ("clean", "filler", "no_and", "control")

    @torch.no_grad()
    def run(self, rm, cache, pp, ablation, context: dict) -> dict:
        out: dict = {"order": pp.prompt.meta["order"], "index": pp.index}
        s2 = pp.roles.index("S2")
        for v in self.variants:
            if v not in pp.prompt.meta and v != "clean":
                continue  # prompts made before the control edit existed
            c = cache if v == "clean" else rm.run(rm.tokenize(pp.prompt.meta[v]))
            shift = c.n_pos - cache.n_pos  # the filler shifts every position by its length
            out[v] = {"metric": float(pp.metric(c.logits)), "END": _attn_codes(rm, c, c.n_pos - 1),
                      "S2": _attn_codes(rm, c, s2 + shift)}
        return out

    def summarize(self, rows: list[dict], clean_mean: float | None = None, seed: int = 0) -> dict:
        res: dict = {"title": self.title,
                     "how": "probe = difference of mean attention-SAE codes (all layers, concatenated) between ABBA "
                            "and BABA prompts, trained on half the clean prompts (alternate pairs); on the other half, "
                            "clean and edited, the probe's score ranks the two orders: AUC = the chance that an ABBA "
                            "prompt scores above a BABA one (0.5: no signal). The verdict uses the AUC, which no "
                            "shift of every score can change; the accuracy at the clean midpoint threshold is shown "
                            "as a variant (an edit that moves every code crosses that threshold without losing the "
                            "signal). 'filler' prepends "
                            f"{FILLER!r} (absolute positions shift); 'no_and' turns 'A and B' into 'A, B' "
                            "(absolute positions kept, 'and' removed); 'control' swaps the place or object word for "
                            "another (positions, names and 'and' kept: a negative control that should keep the "
                            "signal)."}
        variants = [v for v in self.variants if all(v in r for r in rows)]
        for v in variants:
            ms = [r[v]["metric"] for r in rows]
            res[f"{v}_metric_mean"] = mean(ms)
            res[f"{v}_accuracy"] = mean(float(m > 0) for m in ms)
        # prompts alternate ABBA, BABA: split by pairs so that both halves hold both orders
        train = [r for r in rows if r["index"] % 4 < 2]
        test = [r for r in rows if r["index"] % 4 >= 2] or train
        labels = [r["order"] == "ABBA" for r in test]
        scores: dict[str, list[float]] = {}
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
            for v in variants:
                sc = [sum(w.get(k, 0.0) * x for k, x in r[v][where].items()) for r in test]
                hits = [float((x > mid) == y) for x, y in zip(sc, labels, strict=True)]
                res[f"probe_{where}_{v}"] = mean(hits) if hits else float("nan")  # midpoint accuracy (variant)
                res[f"probe_{where}_{v}_auc"] = auc(sc, labels)
                if where == "S2":
                    scores[v] = sc
        res["probe_test_prompts"] = len(test)
        res.update(positional_verdict(scores, labels, seed))
        return res


def auc(scores, labels) -> float:
    """The chance that a positive (label True) scores above a negative, ties counted half (Mann–Whitney); nan
    without both classes."""
    x, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    pos, neg = x[y], x[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    d = pos[:, None] - neg[None, :]
    return float((d > 0).mean() + 0.5 * (d == 0).mean())


def _edit_state(drop: stats.Interval) -> str:
    """'degrades' (interval above 0, AUC drop ≥ 0.1), 'keeps' (whole interval under a 0.1 drop) or 'unclear'."""
    if drop.lo > 0 and drop.value >= 0.1 - 1e-9:
        return "degrades"
    if drop.hi < 0.1:
        return "keeps"
    return "unclear"


def positional_verdict(scores: dict[str, list[float]], labels: list[bool], seed: int = 0) -> dict:
    """The positional verdict from the probe's scores at S2 on the test prompts (clean, filler, no-'and' and the
    control edit; `labels`: True for ABBA): the clean AUC and each edit's AUC drop, with paired bootstrap intervals
    over prompts (one resample of prompts for both AUCs), and the verdict."""
    y = [float(v) for v in labels]

    def clean_auc(c):
        return auc(c["c"], c["y"] > 0.5)

    clean = stats.bootstrap({"c": scores["clean"], "y": y}, clean_auc, seed=seed)
    edits = [v for v in ("filler", "no_and", "control") if v in scores]
    drops = {v: stats.bootstrap({"c": scores["clean"], "e": scores[v], "y": y},
                                lambda c: auc(c["c"], c["y"] > 0.5) - auc(c["e"], c["y"] > 0.5), seed=seed)
             for v in edits}
    f, na = _edit_state(drops["filler"]), _edit_state(drops["no_and"])
    numbers = f"clean AUC {clean}; AUC drop with filler {drops['filler']}; without 'and' {drops['no_and']}"
    if "control" in drops:
        numbers += f"; with the control edit {drops['control']}"
    if clean.lo < 0.75:
        word = "inconclusive: the order is not reliably readable at S2 on clean prompts"
    elif "control" in drops and _edit_state(drops["control"]) != "keeps":
        word = ("inconclusive: the control edit (a place or object swapped) also moves the probe, so a drop under "
                "the other edits need not be about position")
    elif f == "keeps" and na == "degrades":
        word = "relative to 'and': the order signal survives the filler and breaks without 'and'"
    elif f == "degrades" and na == "keeps":
        word = "absolute position: the order signal survives removing 'and' and breaks with the filler"
    elif f == "keeps" and na == "keeps":
        word = "neither edit breaks it: the order signal uses other cues (e.g. the token order itself)"
    elif f == "degrades" and na == "degrades":
        word = "mixed: both edits degrade the order signal"
    else:
        word = (f"inconclusive: the filler {f.replace('unclear', 'has an unclear effect on')} the order signal and "
                f"removing 'and' {na.replace('unclear', 'has an unclear effect on')} it")
    return {"verdict": f"{word} ({numbers})", "verdict_word": word.split(":")[0],
            "probe_auc_clean_interval": clean.as_dict(),
            **{f"probe_auc_drop_{v}": drops[v].as_dict() for v in edits}}
