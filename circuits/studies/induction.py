"""Induction (Olsson et al. 2022) as a case study: "… A B … A" → "B".

Each prompt is a random span of distinct words followed by a repeat of its first few words; the next word of the
span is the answer. Roles: A (the current word's first occurrence), B (the word that followed it — the answer's
first occurrence), END (the current word, repeated), BOS. The corrupted prompt replaces B in the first copy by
another word C, and C is the metric's wrong token: ``m = logit(B) − logit(C)``, so an induction mechanism makes the
clean metric positive and the corrupted one negative. Every prompt has the same layout (one mean-ablation group).
"""

from __future__ import annotations

import random

from circuits.studies.base import Study, StudyPrompt
from circuits.studies.checks import AblateRoleFeatures, PatchRoleFeatures

SPAN = 8
QK_PROMPTS = 160  # evaluation prompts of the QK section: half rank the removal check's nodes, half test it
CUT = 4  # the repeat ends on the span's CUT-th word (1-based): END = A, answer = the next word


class InductionStudy(Study):
    name = "induction"
    title = "Induction: … A B … A → B"
    description = __doc__.split("\n\n")[1]
    roles = ("BOS", "A", "B", "END")
    answer_label = "B"
    wrong_label = "C"

    def prompts(self, model, n: int, seed: int) -> list[StudyPrompt]:
        from circuits.organism.corpus import induction_word_pool

        pool = sorted(induction_word_pool())
        rng = random.Random(f"study-induction-{seed}")
        out = []
        for _ in range(n):
            words = rng.sample(pool, SPAN + 1)
            span, c = words[:SPAN], words[SPAN]
            clean = " ".join(span + span[:CUT])
            corrupt_span = span[:CUT] + [c] + span[CUT + 1:]
            corrupt = " ".join(corrupt_span + span[:CUT])
            out.append(StudyPrompt(clean, corrupt, answer=span[CUT], wrong=c, group="span", meta={}))
        return out

    def assign_roles(self, model, prompt: StudyPrompt, tokens: list[int]) -> list[str]:
        roles = self.bos_end_roles(len(tokens))
        roles[CUT] = "A"  # BOS is position 0, so the span's k-th word (1-based) is at position k
        roles[CUT + 1] = "B"
        return roles

    def qk_analysis(self, rm, evaluation: list, head_data: dict | None, seed: int, workers: int = 1) -> dict | None:
        """The QK decomposition (`circuits.studies.qk_section`) of the copying heads — those attending from END (the
        second copy of A) to B (the token after the first copy), mean attention ≥ 0.3 and above END→A — of their
        END→B versus END→A preference, on the first `QK_PROMPTS` evaluation prompts."""
        from circuits.studies.qk_section import attending_heads, qk_section

        subset = evaluation[:QK_PROMPTS]
        chosen = attending_heads(rm, subset, "END", "B", "A")
        if not chosen:
            return None
        return qk_section(rm, evaluation, chosen, seed, n_prompts=QK_PROMPTS, workers=workers)

    def checks(self) -> list:
        return [AblateRoleFeatures("B", 10), AblateRoleFeatures("END", 10),
                PatchRoleFeatures("END", "attn_feature", 10, source="corrupt",
                                  source_label="the prompt whose first copy continues with C")]
