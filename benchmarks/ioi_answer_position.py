"""Diagnostic: how well the last transcoder reconstructs the MLP output at the IOI answer position.

    python benchmarks/ioi_answer_position.py [--dicts organism|FOLDER ...] [--n 200]

Layer 3's MLP writes the answer name at the last token of an IOI prompt, and its output reaches the logits
directly, so the logit difference (IO − S) lost through the transcoder's error there is exactly
``error · (W_U[:, IO] − W_U[:, S]) / ln_final scale``. For each dictionary set it prints, over the answer positions
of unseen-name-pair prompts (and of prompts with training names): the FVU there, the mean number of active
features, and that lost logit difference — with the dictionary's own activation and with the top-k
pre-activations kept per token instead (k = the dictionary's k).
"""

from __future__ import annotations

import argparse

import torch


def answer_position_table(model, dictionary, prompts, k: int) -> list[tuple[str, float, float, float]]:
    """[(activation, FVU, mean L0, logit difference lost)] over the last position of each prompt."""
    from circuits.dictionaries.activations import TopK
    from circuits.model import hook_ln2_normalized, hook_ln_final_scale, hook_mlp_out
    from circuits.organism.evaluate import _tok_id, padded_tokens

    layer = dictionary.cfg.layer
    pad, lengths = padded_tokens(model, [p.text for p in prompts])
    names = {hook_ln2_normalized(layer), hook_mlp_out(layer), hook_ln_final_scale()}
    _, cache = model.run_with_cache(pad, names_filter=lambda n: n in names)
    rows, last = torch.arange(len(prompts)), lengths - 1
    x = cache[hook_ln2_normalized(layer)][rows, last]
    y = cache[hook_mlp_out(layer)][rows, last]
    scale = cache[hook_ln_final_scale()][rows, last, 0]
    io = torch.tensor([_tok_id(model, " " + p.io) for p in prompts])
    s = torch.tensor([_tok_id(model, " " + p.s) for p in prompts])
    direction = (model.W_U[:, io] - model.W_U[:, s]).T  # [n, d_model]
    out = []
    for label, act in (("own", dictionary.activation), (f"top-{k} per token", TopK(k))):
        codes = act(dictionary.pre_activation(x))
        err = y - dictionary.reconstruct(codes, x)  # a skip transcoder's linear term included
        fvu = (err.pow(2).sum() / (y - y.mean(0)).pow(2).sum()).item()
        lost = ((err * direction).sum(-1) / scale).mean().item()
        out.append((label, fvu, (codes > 0).sum(-1).float().mean().item(), lost))
    return out


def main() -> None:
    from circuits import load_model
    from circuits.dictionaries import load_dictionaries
    from circuits.organism import world as W
    from circuits.organism.corpus import ToyWorldCorpus

    parser = argparse.ArgumentParser()
    parser.add_argument("--dicts", nargs="+", default=["organism"])
    parser.add_argument("--n", type=int, default=200, help="prompts per order (ABBA, BABA)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model, _ = load_model("organism")
    corpus = ToyWorldCorpus(0)
    prompt_sets = {
        "unseen pairs": corpus.ioi_prompts(args.n, "ABBA") + corpus.ioi_prompts(args.n, "BABA"),
        "training names": (corpus.ioi_prompts(args.n, "ABBA", names=W.IOI_TRAIN_NAMES)
                           + corpus.ioi_prompts(args.n, "BABA", names=W.IOI_TRAIN_NAMES)),
    }
    print("| set | d_sae | prompts | activation | FVU at answer | L0 at answer | LD lost via error |")
    print("|---|---|---|---|---|---|---|")
    for name in args.dicts:
        dset = load_dictionaries(name, model)
        last = max(d.cfg.layer for d in dset if d.cfg.kind == "transcoder")
        d = dset.transcoder(last)
        for label, prompts in prompt_sets.items():
            for act, fvu, l0, lost in answer_position_table(model, d, prompts, d.cfg.k or 32):
                print(f"| {name} | {d.cfg.d_sae} | {label} | {act} | {fvu:.3f} | {l0:.1f} | {lost:.2f} |")


if __name__ == "__main__":
    main()
