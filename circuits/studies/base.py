"""The case-study framework: a dataset of prompt pairs, a metric, and named role positions.

A study is one short module that says three things (see `Study`):

1. **prompts** — `StudyPrompt` values: a clean prompt, a corrupted counterpart with the same token layout, and the
   metric's two tokens: ``m = logit(answer) − logit(wrong)`` at the last position;
2. **roles** — which token positions play which part (IO, S1, S2, "and", END for IOI); every other position is
   ``"other"``. Features are compared across prompts *by role*: the node "attention feature 123 of layer 2 at S2"
   stands for that feature at each prompt's S2 position;
3. **checks** — interventions that test the roles the graphs suggest (`circuits.studies.checks`).

Everything else is shared (`circuits.studies.runner`): per-prompt attribution graphs for the contrast, aggregation by
role, roll-ups to heads and MLP layers, integrated-gradient scores for circuit selection, faithfulness curves
against random circuits, and the report.

**Three disjoint prompt sets.** A study draws, from its generator with seeds derived from the run's seed, a
*selection* set (node rankings and the choice of the circuit), an *evaluation* set (faithfulness, checks and every
number reported) and a *reference* set (the means that ablation uses); no clean prompt text is in two sets
(`prompt_sets`). A study may add a *test* set of structurally new prompts, with its own reference set, from a seed
reserved for it (`Study.test_sets`), reported separately and never used while developing the study.

**Mean ablation by group.** Prompts carry a `group` (for IOI: template and name order): prompts of one group share
their token layout, so a node is mean-ablated to its mean *over the reference prompts of the same group at the same
position* (Wang et al. 2022 ablate to a dataset mean the same way). A corpus-wide mean would replace, say, the BOS
position's features by an average over all positions and break the model for reasons unrelated to the task. A group
with fewer than `MIN_GROUP` reference prompts falls back to a coarser grouping (same name order, token count and
role layout), and the report warns when even that is small (`ReferenceMeans`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from circuits.errors import CircuitsError
from circuits.interventions import Ablation

OTHER = "other"
MIN_GROUP = 20  # reference prompts per mean-ablation group, at least
SETS = ("selection", "evaluation", "reference")
SET_SEED_OFFSETS = {"selection": 1, "evaluation": 2, "reference": 3, "test": 4, "test_reference": 5}


def set_seed(seed: int, name: str, attempt: int = 0) -> int:
    """The generator seed of one prompt set (`SET_SEED_OFFSETS`; the test set's offset is reserved for it)."""
    return 1000 * seed + SET_SEED_OFFSETS[name] + 100 * attempt


@dataclass(frozen=True)
class StudyPrompt:
    """One item of a study's dataset. `clean` and `corrupt` must tokenize to the same length."""

    clean: str
    corrupt: str
    answer: str  # metric = logit(answer) − logit(wrong) at the last position
    wrong: str
    group: str  # prompts of a group share a token layout (positions line up); used for mean ablation
    meta: dict = field(default_factory=dict, compare=False, hash=False)


# A role node: a feature (or error, index -1) of one dictionary at one role, identified across prompts.
# (kind, layer, role, index) — plain tuples keep per-prompt records small and picklable.
RoleKey = tuple[str, int, str, int]


def role_key_str(key: RoleKey) -> str:
    kind, layer, role, index = key
    tag = {"attn_feature": "A", "mlp_feature": "M", "attn_error": "errA", "mlp_error": "errM", "token": "tok"}[kind]
    return f"{tag}{layer}#{index}@{role}" if index >= 0 else f"{tag}{layer}@{role}"


class Study:
    """Base class of a case study. Subclasses set `name`, `title`, `roles` and implement `prompts` and
    `assign_roles`; `checks` is optional."""

    name: str = ""
    title: str = ""
    description: str = ""
    roles: tuple[str, ...] = ()
    answer_label: str = "answer"
    wrong_label: str = "wrong"
    max_evaluation: int | None = None  # the most evaluation prompts the study can make (None: no limit)

    def prompts(self, model, n: int, seed: int) -> list[StudyPrompt]:
        raise NotImplementedError

    def assign_roles(self, model, prompt: StudyPrompt, tokens: list[int]) -> list[str]:
        """Role name of each position of the clean prompt's tokens (BOS included); `OTHER` where none applies."""
        raise NotImplementedError

    def checks(self) -> list:
        return []

    def set_sizes(self, n: int) -> dict[str, int]:
        """Sizes of the three sets for an evaluation set of `n` prompts."""
        return {"selection": max(4, n // 2), "evaluation": n, "reference": max(n, MIN_GROUP)}

    def prompt_sets(self, model, n: int, seed: int) -> dict[str, list[StudyPrompt]]:
        """The selection, evaluation and reference sets (see the module docstring): each from `prompts` with its own
        seed, dropping prompts whose clean text an earlier set (or the set itself) already holds."""
        return disjoint_sets(self, model, self.set_sizes(n), seed)

    def test_sets(self, model, n: int, seed: int) -> dict[str, list[StudyPrompt]] | None:
        """Optionally {"test": ..., "test_reference": ...}: structurally new prompts and their reference set."""
        return None

    @property
    def all_roles(self) -> tuple[str, ...]:
        return self.roles + (OTHER,)

    @staticmethod
    def bos_end_roles(n_tokens: int) -> list[str]:
        """Roles with BOS at position 0, END at the last position and `OTHER` between (to fill in)."""
        return ["BOS"] + [OTHER] * (n_tokens - 2) + ["END"]


def disjoint_sets(study: Study, model, sizes: dict[str, int], seed: int, generate=None,
                  used: set[str] | None = None) -> dict[str, list[StudyPrompt]]:
    """One list per entry of `sizes` (in order), each from `generate(model, n, seed)` (default `study.prompts`) with
    `set_seed(seed, name)`, no clean text in two lists; more seeds are tried until a set is full."""
    generate = generate or study.prompts
    used = set() if used is None else used
    out: dict[str, list[StudyPrompt]] = {}
    for name, size in sizes.items():
        got: list[StudyPrompt] = []
        for attempt in range(20):
            for p in generate(model, size + size // 4 + 4, set_seed(seed, name, attempt)):
                if p.clean not in used and len(got) < size:
                    used.add(p.clean)
                    got.append(p)
            if len(got) == size:
                break
        else:
            raise CircuitsError(f"study {study.name!r}: only {len(got)} distinct new prompts for the {name} set "
                                f"({size} wanted); use a smaller --n")
        out[name] = got
    return out


def single_token_id(model, word: str) -> int:
    """The id of `word` as one token (with a leading space, as it appears mid-sentence)."""
    from circuits.attribution.targets import single_token

    return single_token(model, word if word.startswith(" ") else " " + word)


def positions_of(tokens: list[int], token: int) -> list[int]:
    return [i for i, t in enumerate(tokens) if t == token]


@dataclass
class PreparedPrompt:
    """A study prompt after tokenization: ids, roles per position, the metric's tokens."""

    index: int
    prompt: StudyPrompt
    tokens: Tensor  # [pos]
    corrupt_tokens: Tensor  # [pos]
    roles: list[str]  # [pos]
    role_index: Tensor  # [pos] long, index into study.all_roles
    answer: int
    wrong: int

    @property
    def group(self) -> str:
        """The mean-ablation group: the study's group and the token count (so that positions always line up)."""
        return f"{self.prompt.group}/{self.tokens.shape[0]}"

    @property
    def layout(self) -> str:
        """The coarser grouping: name order (if the study has one), token count and the role of every position."""
        return f"{self.prompt.meta.get('order', '')}/{self.tokens.shape[0]}/{','.join(self.roles)}"

    def metric(self, logits: Tensor) -> Tensor:
        return logits[-1, self.answer] - logits[-1, self.wrong]


def prepare(rm, study: Study, prompts: list[StudyPrompt]) -> list[PreparedPrompt]:
    """Tokenize and assign roles; a clear error names the first bad prompt."""
    out = []
    all_roles = study.all_roles
    for i, p in enumerate(prompts):
        tokens = rm.tokenize(p.clean)
        corrupt = rm.tokenize(p.corrupt)
        if corrupt.shape != tokens.shape:
            raise CircuitsError(f"study {study.name!r}, prompt {i}: the corrupted prompt has {corrupt.shape[0]} tokens "
                                f"but the clean one has {tokens.shape[0]}; they must line up")
        roles = study.assign_roles(rm.model, p, tokens.tolist())
        if len(roles) != tokens.shape[0] or any(r not in all_roles for r in roles):
            raise CircuitsError(f"study {study.name!r}, prompt {i}: roles must name each of the {tokens.shape[0]} "
                                f"positions with one of {list(all_roles)}")
        out.append(PreparedPrompt(i, p, tokens, corrupt, roles, torch.tensor([all_roles.index(r) for r in roles]),
                                  single_token_id(rm.model, p.answer), single_token_id(rm.model, p.wrong)))
    return out


#: Prompts per forward pass when `group_means` runs a group as a batch.
MEANS_BATCH = 32


@torch.no_grad()
def group_means(rm, prepared: list[PreparedPrompt], key=None) -> dict[str, Ablation]:
    """Per group (`key(pp)`, default `pp.group`): mean codes and errors of every dictionary at each position over
    the group's prompts (summed in float64; the prompts of a group run as batches of `MEANS_BATCH`, each row as
    `ReplacementModel.run` would give it alone)."""
    groups: dict[str, list[PreparedPrompt]] = {}
    for pp in prepared:
        groups.setdefault(pp.group if key is None else key(pp), []).append(pp)
    out: dict[str, Ablation] = {}
    for g, pps in groups.items():
        lengths = sorted({pp.tokens.shape[0] for pp in pps})
        if len(lengths) > 1:
            raise CircuitsError(f"group {g!r} mixes token layouts ({lengths[0]} and {lengths[-1]} positions); "
                                "prompts of a group must line up")
        sums: dict[str, list[Tensor]] = {}
        for start in range(0, len(pps), MEANS_BATCH):
            codes, errors = rm.codes_and_errors(torch.stack([pp.tokens for pp in pps[start:start + MEANS_BATCH]]))
            for name in codes:
                c, e = codes[name].double().sum(0), errors[name].double().sum(0)
                if name in sums:
                    sums[name][0] += c
                    sums[name][1] += e
                else:
                    sums[name] = [c, e]
        n = len(pps)
        out[g] = Ablation("mean", {k: v[0].div(n).float() for k, v in sums.items()},
                          {k: v[1].div(n).float() for k, v in sums.items()})
    return out


@dataclass
class ReferenceMeans:
    """Mean-ablation values for the prompts of a study, from its reference set (never from the prompts scored).

    A prompt's group (`PreparedPrompt.group`) is used when the reference set holds at least `MIN_GROUP` prompts of
    it; otherwise its coarser `layout` group; `sizes` records the reference count behind each prompt's means."""

    means: dict[str, Ablation]  # group or layout key -> Ablation
    counts: dict[str, int]
    warnings: list[str]
    min_size: int = MIN_GROUP

    def key(self, pp: PreparedPrompt) -> str:
        if self.counts.get(pp.group, 0) >= self.min_size or pp.layout not in self.means:
            if pp.group not in self.means:
                raise CircuitsError(f"no reference prompts for group {pp.group!r} (or its layout); the reference set "
                                    "must cover every group of the prompts it serves")
            return pp.group
        return pp.layout

    def for_prompt(self, pp: PreparedPrompt) -> Ablation:
        return self.means[self.key(pp)]

    def summary(self, prompts: list[PreparedPrompt]) -> dict:
        """Groups used by `prompts`: how many, their reference sizes, whether any fell back to the layout."""
        keys = [self.key(pp) for pp in prompts]
        sizes = sorted({k: self.counts[k] for k in keys}.values())
        return {"groups": len(set(keys)), "smallest": sizes[0] if sizes else 0, "largest": sizes[-1] if sizes else 0,
                "coarse": sorted({k for k, pp in zip(keys, prompts, strict=True) if k != pp.group}),
                "min_group": self.min_size, "warnings": list(self.warnings)}


def reference_means(rm, reference: list[PreparedPrompt], served: list[PreparedPrompt],
                    min_size: int = MIN_GROUP) -> ReferenceMeans:
    """Group means over `reference` for the groups of `served`, with the coarser layout grouping where a group has
    fewer than `min_size` reference prompts (a warning says so, and another one when the layout is small too)."""
    fine: dict[str, list[PreparedPrompt]] = {}
    coarse: dict[str, list[PreparedPrompt]] = {}
    for pp in reference:
        fine.setdefault(pp.group, []).append(pp)
        coarse.setdefault(pp.layout, []).append(pp)
    wanted: dict[str, list[PreparedPrompt]] = {}
    warnings: list[str] = []
    for pp in served:
        if len(fine.get(pp.group, [])) >= min_size:
            wanted[pp.group] = fine[pp.group]
        elif pp.layout in coarse:
            wanted[pp.layout] = coarse[pp.layout]
        elif pp.group in fine:
            wanted[pp.group] = fine[pp.group]
        else:
            raise CircuitsError(f"the reference set has no prompt of group {pp.group!r} or layout {pp.layout!r}")
    small_fine = sorted({pp.group for pp in served if len(fine.get(pp.group, [])) < min_size})
    if small_fine:
        warnings.append(f"{len(small_fine)} group(s) have fewer than {min_size} reference prompts; their prompts use "
                        "the coarser grouping (same name order, token count and role layout)")
    small = sorted(k for k, v in wanted.items() if len(v) < min_size)
    if small:
        warnings.append(f"{len(small)} mean-ablation group(s) still have fewer than {min_size} reference prompts "
                        f"(smallest: {min(len(wanted[k]) for k in small)}): their means are noisy; use a larger --n")
    means: dict[str, Ablation] = {}
    for key, pps in wanted.items():
        means[key] = group_means(rm, pps, key=lambda _pp, key=key: key)[key]
    return ReferenceMeans(means, {k: len(v) for k, v in wanted.items()}, warnings, min_size)


def keep_masks(rm, cache, pp: PreparedPrompt, keys: set[RoleKey] | frozenset, errors: bool
               ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Masks for `run_edited(keep=...)` (use with `hold_inactive`): the role nodes in `keys` that are active on this
    prompt stay live, and all error nodes when `errors` is True; every other feature takes the ablation's value."""
    fmask, emask = {}, {}
    by_site: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for kind, layer, role, index in keys:
        by_site.setdefault((kind, layer), []).append((role, index))
    for d in rm.dictionaries:
        name = d.cfg.name
        kind = f"{d.cfg.site}_feature"
        codes = cache.codes[name]
        mask = torch.zeros_like(codes, dtype=torch.bool)
        for role, index in by_site.get((kind, d.cfg.layer), []):
            pos = [p for p, r in enumerate(pp.roles) if r == role]
            if pos:
                mask[pos, index] = True
        fmask[name] = mask & (codes != 0)
        emask[name] = torch.full((cache.n_pos,), errors, dtype=torch.bool)
    return fmask, emask
