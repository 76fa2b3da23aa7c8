"""Two-hop factual recall as a case study: "The capital of the country containing Lyon is" → " Paris".

The model must go city → country → capital. Roles: city, "country" (the word), END ("is"), BOS. The corrupted
prompt names a city of another country, whose capital is the metric's wrong token: ``m = logit(capital) −
logit(other capital)``. Every prompt has the same layout (one mean-ablation group).

A clean prompt is fixed by its city, so the three disjoint sets split the organism's cities: of the 24 cities whose
two-hop question training never showed ("unseen") and the 72 whose question it did ("seen"), a quarter of each goes
to selection, a quarter to reference and half to evaluation (at most 48 evaluation prompts, 12 unseen); the report
gives every number for seen and unseen questions separately.
"""

from __future__ import annotations

import random

from circuits.studies.base import Study, StudyPrompt, positions_of, single_token_id
from circuits.studies.checks import AblateRoleFeatures, PatchRoleFeatures

TEMPLATE = "The capital of the country containing {city} is"


class TwoHopStudy(Study):
    name = "two_hop"
    title = "Two-hop recall: city → country → capital"
    description = __doc__.split("\n\n")[1]
    roles = ("BOS", "country", "city", "END")
    answer_label = "capital"
    wrong_label = "other capital"
    max_evaluation = 48  # half of the 96 cities (a city fixes its prompt)

    def prompts(self, model, n: int, seed: int) -> list[StudyPrompt]:
        from circuits.organism import world as W

        cities = list(W.CITIES)
        return [self._prompt(cities[(i + seed) % len(cities)], i, seed) for i in range(n)]

    def prompt_sets(self, model, n: int, seed: int) -> dict[str, list[StudyPrompt]]:
        from circuits.organism import world as W

        rng = random.Random(f"two-hop-sets-{seed}")
        parts: dict[str, list[str]] = {"selection": [], "evaluation": [], "reference": []}
        for pool in (list(W.TWO_HOP_HELDOUT_CITIES), list(W.TWO_HOP_TRAIN_CITIES)):
            rng.shuffle(pool)
            q = len(pool) // 4
            parts["selection"] += pool[:q]
            parts["reference"] += pool[q:2 * q]
            evaluation = pool[2 * q:]
            parts["evaluation"] += evaluation[: max(1, round(len(evaluation) * min(1.0, n / 48)))]
        return {name: [self._prompt(c, i, seed) for i, c in enumerate(cities)] for name, cities in parts.items()}

    def _prompt(self, city: str, i: int, seed: int) -> StudyPrompt:
        from circuits.organism import world as W

        cities = list(W.CITIES)
        j = (i * 37 + 11 + seed) % len(cities)
        while W.COUNTRY_OF[cities[j]] == W.COUNTRY_OF[city]:
            j = (j + 5) % len(cities)
        other = cities[j]
        return StudyPrompt(TEMPLATE.format(city=city), TEMPLATE.format(city=other),
                           answer=W.CAPITAL_OF[W.COUNTRY_OF[city]], wrong=W.CAPITAL_OF[W.COUNTRY_OF[other]],
                           group="template",
                           meta={"subset": "unseen question (held-out city)" if city in W.TWO_HOP_HELDOUT_CITIES
                                 else "seen question (training city)"})

    def assign_roles(self, model, prompt: StudyPrompt, tokens: list[int]) -> list[str]:
        roles = self.bos_end_roles(len(tokens))
        roles[positions_of(tokens, single_token_id(model, "country"))[0]] = "country"
        roles[-2] = "city"
        return roles

    def checks(self) -> list:
        return [AblateRoleFeatures("city", 10), AblateRoleFeatures("END", 10),
                PatchRoleFeatures("END", "attn_feature", 10, source="corrupt",
                                  source_label="the prompt with a city of another country"),
                PatchRoleFeatures("city", "mlp_feature", 10, source="corrupt",
                                  source_label="the prompt with a city of another country")]
