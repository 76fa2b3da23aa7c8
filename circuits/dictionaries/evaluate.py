"""Fidelity of a dictionary set on held-out text: does the replacement explain the model?

For each dictionary alone, and for all of them spliced at once (error terms off), over held-out corpus rows:

* ``l0``: mean number of active features per token; ``fvu``: fraction of variance unexplained,
  Σ‖target − output‖² / Σ‖target − mean(target)‖²; ``dead``: fraction of features that never fire on
  ``dead_rows`` held-out rows (1,048,576 tokens by default; Gao et al. 2024 count a latent dead after 10M tokens
  without firing) and ``dead_scored``: the same on the scored rows only (32,768 tokens, where a feature that
  fires once per 50k tokens counts as dead);
* cross-entropy (nats/token): ``ce_clean``, ``ce_spliced``, ``ce_zero`` (component zero-ablated), ``ce_mean``
  (component replaced by its mean activation on other held-out rows); ``ce_increase = ce_spliced − ce_clean``;
  ``ce_recovered_zero = (ce_zero − ce_spliced)/(ce_zero − ce_clean)`` and the same against mean ablation;
  ``kl``: mean KL(clean ‖ spliced) per token;
* ``ioi_ld_retained``: mean IOI logit difference (IO − S, unseen name pairs, both orders, training templates)
  spliced / clean; for all dictionaries at once also ``ioi_ld_retained_heldout_templates``: the same on the
  organism's held-out templates (the prompts the IOI case study draws, `IOIStudy("heldout")`).

A cross-layer transcoder is spliced whole (its layers need each other's codes), so its per-dictionary entries
``transcoder_L{l}`` share the cross-entropy, KL and IOI numbers of the whole CLT spliced (``spliced_with`` names
it) and have their own ``l0``, ``fvu`` (output layer l) and ``dead`` (encoder layer l). Its zero- and mean-
ablation baselines ablate every MLP output it replaces.

The ablated component is the dictionary's replaced activation: ``hook_mlp_out`` for a transcoder, ``attn.hook_z``
for an attention SAE (so the attention output falls back to its bias b_O).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from circuits.dictionaries.dictset import DictionarySet
from circuits.replacement import ablation_hooks, mean_activations, splice_hooks


@dataclass(frozen=True)
class FidelitySizes:
    rows: int = 256  # held-out rows scored (256 * 128 = 32,768 tokens)
    mean_rows: int = 128  # other held-out rows for mean ablation
    ioi_prompts: int = 200  # per order
    batch: int = 32
    dead_rows: int = 8192  # held-out rows (8192 * 128 = 1,048,576 tokens) for the dead fraction


#: The subsample that tests re-evaluate against ``fidelity.json["ci_subsample"]``.
CI_SIZES = FidelitySizes(rows=16, mean_rows=16, ioi_prompts=16, batch=16, dead_rows=32)


def heldout_tokens(n_ctx: int, rows: int, offset: int) -> Tensor:
    from circuits.organism.corpus import ToyWorldCorpus
    from circuits.organism.tokenizer import build_tokenizer
    from circuits.organism.train import batch_tokens

    return batch_tokens(ToyWorldCorpus(0), build_tokenizer(), offset, rows, n_ctx, stream="heldout-dicts")


def _ce_and_logprobs(model, tokens: Tensor, hooks) -> tuple[Tensor, Tensor]:
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks) if hooks else model(tokens)
    logp = logits.log_softmax(-1)
    nll = -logp[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    return nll, logp


def _ioi_ld(model, hooks, n: int, heldout_templates: bool = False) -> float:
    from circuits.organism.corpus import ToyWorldCorpus
    from circuits.organism.evaluate import ioi_logit_diffs

    corpus = ToyWorldCorpus(0)
    prompts = (corpus.ioi_prompts(n, "ABBA", heldout_templates=heldout_templates)
               + corpus.ioi_prompts(n, "BABA", heldout_templates=heldout_templates))
    return ioi_logit_diffs(model, prompts, hooks).mean().item()


@torch.no_grad()
def fired_features(model, dset: DictionarySet, rows: int, batch: int = 64, progress: bool = False
                   ) -> dict[str, Tensor]:
    """{name: [d_sae] bool}: which features fire at least once on `rows` held-out rows (encoder pass only)."""
    from tqdm.auto import tqdm

    members = list(dset)
    fired = {d.cfg.name: torch.zeros(d.cfg.d_sae, dtype=torch.bool) for d in members}
    hooks_in = {d.hook_in for d in members}
    last_layer = max(d.cfg.layer for d in members)
    for start in tqdm(range(0, rows, batch), desc="dead features", disable=not progress):
        toks = heldout_tokens(model.cfg.n_ctx, min(batch, rows - start), start)
        _, cache = model.run_with_cache(toks, names_filter=lambda n: n in hooks_in,
                                        stop_at_layer=last_layer + 1)
        for d in members:
            codes = d.encode(d.flatten_input(cache[d.hook_in]))
            fired[d.cfg.name] |= (codes > 0).reshape(-1, d.cfg.d_sae).any(0)
    return fired


@torch.no_grad()
def evaluate_fidelity(model, dset: DictionarySet, sizes: FidelitySizes = FidelitySizes(),
                      progress: bool = False, per_dictionary: bool = True) -> dict:
    """The fidelity report as a dict: {"dictionaries": {name: metrics}, "all": metrics, "sizes": ...}.

    `per_dictionary=False`: only "all" (every dictionary spliced at once; "dictionaries" is empty)."""
    from tqdm.auto import tqdm

    tokens = heldout_tokens(model.cfg.n_ctx, sizes.rows, 0)
    mean_toks = heldout_tokens(model.cfg.n_ctx, sizes.mean_rows, 100_000)
    sites = [d.hook_out for d in dset]
    means = mean_activations(model, mean_toks.split(sizes.batch), sites)
    batches = tokens.split(sizes.batch)

    clean_nll, clean_logp = [], []
    for b in batches:
        nll, logp = _ce_and_logprobs(model, b, None)
        clean_nll.append(nll)
        clean_logp.append(logp)
    ce_clean = torch.cat(clean_nll).mean().item()
    ld_clean = _ioi_ld(model, None, sizes.ioi_prompts)

    def run(members: list, per_member: bool) -> dict:
        names = [d.hook_out for d in members]
        res: dict = {}
        stats = {d.cfg.name: {"sq_err": 0.0, "sq_tot": 0.0, "l0": 0.0, "n": 0,
                              "fired": torch.zeros(d.cfg.d_sae, dtype=torch.bool),
                              "sum": None, "sumsq": 0.0} for d in members}
        ce_s, ce_z, ce_m, kl = [], [], [], []
        for b, logp_clean in zip(batches, clean_logp, strict=True):
            store: dict = {}
            outs: dict = {}
            nll, logp = _ce_and_logprobs(model, b, splice_hooks(members, "off", store, outs))
            ce_s.append(nll)
            kl.append((logp_clean.exp() * (logp_clean - logp)).sum(-1).flatten())
            ce_z.append(_ce_and_logprobs(model, b, ablation_hooks(names, "zero"))[0])
            ce_m.append(_ce_and_logprobs(model, b, ablation_hooks(names, "mean", means))[0])
            for d in members:
                codes, err = store[d.cfg.name]
                target = (err + outs[d.cfg.name]).reshape(-1, d.cfg.d_out).double()  # the original activation
                s = stats[d.cfg.name]
                s["sq_err"] += err.double().pow(2).sum().item()
                s["sum"] = target.sum(0) if s["sum"] is None else s["sum"] + target.sum(0)
                s["sumsq"] += target.pow(2).sum().item()
                s["n"] += target.shape[0]
                s["l0"] += (codes > 0).sum().item()
                s["fired"] |= (codes > 0).reshape(-1, d.cfg.d_sae).any(0)
        ce_spliced = torch.cat(ce_s).mean().item()
        ce_zero, ce_mean = torch.cat(ce_z).mean().item(), torch.cat(ce_m).mean().item()
        res.update({
            "ce_clean": ce_clean, "ce_spliced": ce_spliced, "ce_zero": ce_zero, "ce_mean": ce_mean,
            "ce_increase": ce_spliced - ce_clean,
            "ce_recovered_zero": (ce_zero - ce_spliced) / (ce_zero - ce_clean) if ce_zero != ce_clean else float("nan"),
            "ce_recovered_mean": (ce_mean - ce_spliced) / (ce_mean - ce_clean) if ce_mean != ce_clean else float("nan"),
            "zero_ablation_cost": ce_zero - ce_clean,
            "kl": torch.cat(kl).mean().item(),
        })
        ld = _ioi_ld(model, splice_hooks(members, "off"), sizes.ioi_prompts)
        res["ioi_ld_clean"], res["ioi_ld_spliced"] = ld_clean, ld
        res["ioi_ld_retained"] = ld / ld_clean if ld_clean else float("nan")
        if per_member:
            res["members"] = {}
            for d in members:
                s = stats[d.cfg.name]
                total = s["sumsq"] - (s["sum"].pow(2).sum().item() / s["n"])
                fired = fired_long[d.cfg.name] | s["fired"]
                res["members"][d.cfg.name] = {
                    "l0": s["l0"] / s["n"], "fvu": s["sq_err"] / total,
                    "dead_scored": 1 - s["fired"].float().mean().item(), "tokens": s["n"],
                    "dead": 1 - fired.float().mean().item(),
                    "dead_tokens": max(sizes.dead_rows, sizes.rows) * model.cfg.n_ctx}
        return res

    members = list(dset)
    fired_long = fired_features(model, dset, sizes.dead_rows, progress=progress) if per_dictionary else {}
    report = {"dictionaries": {}, "sizes": sizes.__dict__}
    for unit in tqdm(splice_units(members) if per_dictionary else [], desc="fidelity", disable=not progress):
        res = run(unit, per_member=True)
        shared = {k: v for k, v in res.items() if k != "members"}
        if len(unit) > 1:
            shared["spliced_with"] = unit[0].clt.name
        for name, own in res["members"].items():
            report["dictionaries"][name] = {**shared, **own}
    report["all"] = run(members, per_member=False)
    heldout = _ioi_ld(model, splice_hooks(members, "off"), sizes.ioi_prompts, heldout_templates=True)
    heldout_clean = _ioi_ld(model, None, sizes.ioi_prompts, heldout_templates=True)
    report["all"].update({"ioi_ld_clean_heldout_templates": heldout_clean,
                          "ioi_ld_spliced_heldout_templates": heldout,
                          "ioi_ld_retained_heldout_templates": heldout / heldout_clean if heldout_clean
                          else float("nan")})
    return report


def splice_units(members: list) -> list[list]:
    """The dictionaries of a set grouped into what can be spliced alone: each per-layer dictionary by itself, a
    cross-layer transcoder's layers together (in set order)."""
    from circuits.dictionaries.clt import CLTLayer

    units: list[list] = []
    seen: set[int] = set()
    for d in members:
        if not isinstance(d, CLTLayer):
            units.append([d])
        elif id(d.clt) not in seen:
            seen.add(id(d.clt))
            units.append([m for m in members if isinstance(m, CLTLayer) and m.clt is d.clt])
    return units


def check_targets(report: dict) -> dict[str, bool]:
    """Issue targets: per dictionary FVU ≤ 0.10, L0 ≤ 32, dead ≤ 10%, CE increase ≤ 0.02 nats and, where zero
    ablation costs > 0.1 nats, CE recovered ≥ 95%; all at once CE recovered ≥ 85% and IOI LD retained ≥ 75%."""
    out = {}
    for name, m in report["dictionaries"].items():
        ok = m["fvu"] <= 0.10 and m["l0"] <= 32 and m["dead"] <= 0.10 and m["ce_increase"] <= 0.02
        if m["zero_ablation_cost"] > 0.1:
            ok = ok and m["ce_recovered_zero"] >= 0.95
        out[name] = ok
    out["all"] = report["all"]["ce_recovered_zero"] >= 0.85 and report["all"]["ioi_ld_retained"] >= 0.75
    return out
