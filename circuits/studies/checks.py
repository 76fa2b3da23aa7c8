"""Interventions that test the roles a study's graphs suggest. Each check runs per prompt of the evaluation set
(in the workers) and is summarised with its effect, a random baseline, paired bootstrap 95% intervals over prompts and
a verdict (`circuits.studies.stats.verdict`: "confirmed" only when the effect's interval excludes zero and the
baseline's interval and the effect is at least 10% of the clean metric; otherwise "not confirmed" or
"inconclusive").

* `AblateRoleFeatures`: mean-ablate (to the reference mean, active or not) the top-k features at one role that
  *support* the answer (positive IG score on the selection prompts); the metric should fall — by more than ablating
  k random features of the same dictionaries that are active at that role on the prompt (stratified baseline).
* `PatchRoleFeatures`: set the top-k features of one kind at one role to their values on a source prompt (by
  default the corrupted prompt; for IOI, the prompt with the two names swapped); the metric should move toward (or
  past) the source's answer — "flipped" counts prompts where it changes sign. Patching *every* feature of that kind
  at the role is reported as the upper bound, and k random ones of the same dictionaries as the baseline.

Both run the replacement model with live attention and LayerNorm; error nodes keep their clean values.
"""

from __future__ import annotations

import random
from statistics import mean

import torch

from circuits.graph import FEATURE_KINDS, Node
from circuits.interventions import Edit, dictionary_of, run_edited
from circuits.studies import stats
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


def _stratified(rng: random.Random, chosen: list, pool: list) -> list:
    """For each chosen node, a random node of `pool` from the same dictionary (kind, layer), not chosen; nodes whose
    dictionary has no other candidate are dropped."""
    taken, out = set(chosen), []
    for key in chosen:
        cands = [k for k in pool if k[:2] == key[:2] and k not in taken]
        if cands:
            pick = rng.choice(cands)
            taken.add(pick)
            out.append(pick)
    return out


def _judge(effect: list[float], baseline: list[float], clean: float, seed: int) -> dict:
    """Intervals of the effect and baseline columns (mean over prompts) and the verdict."""
    e, b = stats.mean_interval(effect, seed), stats.mean_interval(baseline, seed)
    v = stats.verdict(e, b, clean)
    return {"effect": e.as_dict(), "baseline": b.as_dict(), "verdict_word": v.word,
            "verdict": f"{v.word}: {v.reason}"}


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
                fmask[d.cfg.name][p, index] = False  # ... except the chosen features, set to their reference mean
        return float(pp.metric(run_edited(rm, cache, keep=(fmask, emask), ablation=ablation)[0]))

    @torch.no_grad()
    def run(self, rm, cache, pp: PreparedPrompt, ablation, context: dict) -> dict:
        top = _top_features(context, self.role, self.k)
        rand = _stratified(_rng(pp, self.name), top, _active_at(rm, cache, pp, self.role))
        return {"before": float(pp.metric(cache.logits)), "after": self._ablate(rm, cache, pp, ablation, top),
                "random": self._ablate(rm, cache, pp, ablation, rand), "k": float(len(top)),
                "k_random": float(len(rand))}

    def summarize(self, rows: list[dict], clean_mean: float | None = None, seed: int = 0) -> dict:
        before, after, rnd = (mean(r[c] for r in rows) for c in ("before", "after", "random"))
        clean = before if clean_mean is None else clean_mean
        judged = _judge([r["before"] - r["after"] for r in rows], [r["before"] - r["random"] for r in rows], clean,
                        seed)
        return {"title": self.title, "features_ablated": mean(r["k"] for r in rows),
                "random_ablated": mean(r.get("k_random", r["k"]) for r in rows), "metric_before": before,
                "metric_after": after, "metric_after_random": rnd, "drop": before - after, "drop_random": before - rnd,
                "drop_share": (before - after) / abs(clean) if clean else float("nan"),
                "fraction_lowered": mean(float(r["after"] < r["before"]) for r in rows), "n": len(rows), **judged,
                "how": f"mean-ablate (reference mean) the top {self.k} features at {self.role} with positive IG score "
                       f"on the selection prompts; baseline: as many random features of the same dictionaries active "
                       f"at {self.role} on the prompt; effect = drop of the metric, 95% paired bootstrap intervals"}


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
        rand = _stratified(_rng(pp, self.name), top, every)
        return {"before": float(pp.metric(cache.logits)), "source": float(pp.metric(src.logits)),
                "after_top": self._patch(rm, cache, src, pp, top), "after_all": self._patch(rm, cache, src, pp, every),
                "after_random": self._patch(rm, cache, src, pp, rand)}

    def summarize(self, rows: list[dict], clean_mean: float | None = None, seed: int = 0) -> dict:
        cols = ("before", "source", "after_top", "after_all", "after_random")
        m = {c: mean(r[c] for r in rows) for c in cols}
        flip = {c: mean(float((r[c] < 0) != (r["before"] < 0)) for r in rows) for c in cols[2:]}
        clean = m["before"] if clean_mean is None else clean_mean
        judged = _judge([r["before"] - r["after_top"] for r in rows], [r["before"] - r["after_random"] for r in rows],
                        clean, seed)
        gap = m["before"] - m["source"]
        moved = m["before"] - m["after_top"]
        return {"title": self.title, **{f"metric_{c}": v for c, v in m.items()},
                **{f"flipped_{c.removeprefix('after_')}": v for c, v in flip.items()},
                "share_of_gap": moved / gap if gap > 0 else float("nan"), "n": len(rows), **judged,
                "how": f"set the top {self.k} {self.kind.replace('_', ' ')}s at {self.role} (largest IG scores on the "
                       f"selection prompts) to their values on {self.source_label}; 'all' patches every such feature "
                       f"at {self.role}; baseline: as many random ones of the same dictionaries; effect = how far "
                       f"the metric moves toward the source, 95% paired bootstrap intervals"}
