"""Interventions that test the roles a study's graphs suggest. Each check runs per prompt (in the workers) and is
summarised over the dataset with its measured effect and a baseline, so a reader can judge it.

* `AblateRoleFeatures`: mean-ablate (to the group mean) the top-k circuit features at one role that *support* the
  answer (positive integrated-gradient score); the metric should fall — by more than ablating k random features
  active at that role.
* `PatchRoleFeatures`: set the top-k circuit features of one kind at one role to their values on a source prompt
  (by default the corrupted prompt; for IOI, the prompt with the two names swapped); the metric should move toward
  (or past) the source's answer — "flipped" counts prompts where it changes sign. Patching *every* feature of that
  kind at the role is reported as the upper bound, and k random ones as the baseline.

Both run the replacement model with live attention and LayerNorm; error nodes keep their clean values.
"""

from __future__ import annotations

import random
from statistics import mean

import torch

from circuits.graph import FEATURE_KINDS, Node
from circuits.interventions import Edit, dictionary_of, run_edited
from circuits.studies.base import PreparedPrompt


def _top_features(context: dict, role: str, k: int, kind: str | None = None, positive: bool = True) -> list:
    """The first k feature role nodes at `role` in the circuit ranking (optionally of one kind / supporting)."""
    out = []
    for key, score in context["ranking"]:
        if key[0] in FEATURE_KINDS and key[2] == role and (kind is None or key[0] == kind):
            if positive and score <= 0:
                continue
            out.append(key)
            if len(out) == k:
                break
    return out


def _active_at(rm, cache, pp: PreparedPrompt, role: str, kind: str | None = None) -> list:
    out = []
    for d in rm.dictionaries:
        k = f"{d.cfg.site}_feature"
        if kind is not None and k != kind:
            continue
        for p in (i for i, r in enumerate(pp.roles) if r == role):
            out += [(k, d.cfg.layer, role, int(i)) for i in torch.nonzero(cache.codes[d.cfg.name][p]).flatten()]
    return sorted(set(out))


def _rng(pp: PreparedPrompt, salt: str) -> random.Random:
    return random.Random(f"{salt}-{pp.index}")


class AblateRoleFeatures:
    def __init__(self, role: str, k: int = 10):
        self.role, self.k = role, k
        self.name = f"ablate_{role}_features"
        self.title = f"Mean-ablating the top {k} supporting features at {role} lowers the metric"

    def _ablate(self, rm, cache, pp, ablation, keys) -> float:
        fmask = {n: torch.ones_like(c, dtype=torch.bool) for n, c in cache.codes.items()}  # everything live ...
        emask = {n: torch.ones(cache.n_pos, dtype=torch.bool) for n in cache.codes}
        for kind, layer, role, index in keys:
            for p in (i for i, r in enumerate(pp.roles) if r == role):
                d = dictionary_of(rm, Node(kind, layer, p, index))
                if cache.codes[d.cfg.name][p, index] != 0:
                    fmask[d.cfg.name][p, index] = False  # ... except the chosen features, where active
        return float(pp.metric(run_edited(rm, cache, keep=(fmask, emask), ablation=ablation)[0]))

    @torch.no_grad()
    def run(self, rm, cache, pp: PreparedPrompt, ablation, context: dict) -> dict:
        top = _top_features(context, self.role, self.k)
        pool = _active_at(rm, cache, pp, self.role)
        rand = _rng(pp, self.name).sample(pool, min(self.k, len(pool)))
        return {"before": float(pp.metric(cache.logits)), "after": self._ablate(rm, cache, pp, ablation, top),
                "random": self._ablate(rm, cache, pp, ablation, rand), "k": float(len(top))}

    def summarize(self, rows: list[dict]) -> dict:
        before, after, rnd = (mean(r[c] for r in rows) for c in ("before", "after", "random"))
        drop, rdrop = before - after, before - rnd
        fell = mean(float(r["after"] < r["before"]) for r in rows)
        ok = drop > 0 and drop > 2 * max(rdrop, 0.0)
        share = drop / abs(before) if before else float("nan")
        verdict = "not confirmed"
        if ok:
            verdict = (f"confirmed: the metric falls by {share:.0%}" if share >= 0.1 else
                       f"confirmed but small: the metric falls by {share:.0%} (random: {rdrop / abs(before):.0%})")
        return {"title": self.title, "features_ablated": mean(r["k"] for r in rows), "metric_before": before,
                "metric_after": after, "metric_after_random": rnd,
                "drop": drop, "drop_random": rdrop, "fraction_lowered": fell,
                "verdict": verdict,
                "how": f"mean-ablate (group mean) the top {self.k} circuit features at {self.role} with positive "
                       f"IG score, where active; baseline: {self.k} random features active at {self.role}"}


class PatchRoleFeatures:
    def __init__(self, role: str, kind: str = "attn_feature", k: int = 10, source: str = "corrupt",
                 source_label: str = "the corrupted prompt"):
        self.role, self.kind, self.k, self.source, self.source_label = role, kind, k, source, source_label
        self.name = f"patch_{role}_{kind.split('_')[0]}_from_{source}"
        self.title = f"Patching the top {k} {kind.replace('_', ' ')}s at {role} from {source_label}"

    def _source_cache(self, rm, pp: PreparedPrompt):
        text = pp.prompt.corrupt if self.source == "corrupt" else pp.prompt.meta[self.source]
        tokens = rm.tokenize(text)
        if tokens.shape != pp.tokens.shape:
            raise ValueError(f"source prompt for {self.name} does not line up with the clean prompt")
        return rm.run(tokens)

    def _patch(self, rm, cache, src, pp, keys) -> float:
        edits = []
        for kind, layer, role, index in keys:
            for p in (i for i, r in enumerate(pp.roles) if r == role):
                d = dictionary_of(rm, Node(kind, layer, p, index))
                edits.append(Edit(Node(kind, layer, p, index), "set", float(src.codes[d.cfg.name][p, index])))
        return float(pp.metric(run_edited(rm, cache, edits)[0]))

    @torch.no_grad()
    def run(self, rm, cache, pp: PreparedPrompt, ablation, context: dict) -> dict:
        src = self._source_cache(rm, pp)
        top = _top_features(context, self.role, self.k, self.kind, positive=False)
        every = sorted(set(_active_at(rm, cache, pp, self.role, self.kind))
                       | set(_active_at(rm, src, pp, self.role, self.kind)))
        rand = _rng(pp, self.name).sample(every, min(self.k, len(every)))
        return {"before": float(pp.metric(cache.logits)), "source": float(pp.metric(src.logits)),
                "after_top": self._patch(rm, cache, src, pp, top), "after_all": self._patch(rm, cache, src, pp, every),
                "after_random": self._patch(rm, cache, src, pp, rand)}

    def summarize(self, rows: list[dict]) -> dict:
        cols = ("before", "source", "after_top", "after_all", "after_random")
        m = {c: mean(r[c] for r in rows) for c in cols}
        flip = {c: mean(float((r[c] < 0) != (r["before"] < 0)) for r in rows) for c in cols[2:]}
        moved = m["before"] - m["after_top"]
        ok = moved > 0 and moved > 2 * max(m["before"] - m["after_random"], 0.0)
        gap = m["before"] - m["source"]
        part = f" ({moved / gap:.0%} of the way to the source)" if gap > 0 else ""
        return {"title": self.title, **{f"metric_{c}": v for c, v in m.items()},
                **{f"flipped_{c.removeprefix('after_')}": v for c, v in flip.items()},
                "verdict": ("confirmed: the answer flips" + part if ok and flip["after_top"] > 0.5 else
                            "confirmed: the metric moves toward the source" + part if ok else "not confirmed"),
                "how": f"set the top {self.k} circuit {self.kind.replace('_', ' ')}s at {self.role} (highest IG scores) to their "
                       f"values on {self.source_label}; 'all' patches every such feature at {self.role}; baseline: "
                       f"{self.k} random ones"}
