"""Two-hop factual recall as a case study: "The capital of the country containing Lyon is" → " Paris".

The model must go city → country → capital. Roles: city, "country" (the word), END ("is"), BOS. The corrupted
prompt names a city of another country, whose capital is the metric's wrong token: ``m = logit(capital) −
logit(other capital)``. Every prompt has the same layout (one mean-ablation group); cities cycle through the
organism's world (two-hop questions seen in training and held out).
"""

from __future__ import annotations

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

    def prompts(self, model, n: int, seed: int) -> list[StudyPrompt]:
        from circuits.organism import world as W

        cities = list(W.CITIES)
        out = []
        for i in range(n):
            city = cities[(i + seed) % len(cities)]
            j = (i * 37 + 11 + seed) % len(cities)
            while W.COUNTRY_OF[cities[j]] == W.COUNTRY_OF[city]:
                j = (j + 5) % len(cities)
            other = cities[j]
            out.append(StudyPrompt(TEMPLATE.format(city=city), TEMPLATE.format(city=other),
                                   answer=W.CAPITAL_OF[W.COUNTRY_OF[city]], wrong=W.CAPITAL_OF[W.COUNTRY_OF[other]],
                                   group="template",
                                   meta={"subset": "held-out city" if city in W.TWO_HOP_HELDOUT_CITIES
                                         else "training city"}))
        return out

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
