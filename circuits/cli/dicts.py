"""`circuits dicts train | eval | finetune | fit-skip | fit-decoder | calibrate | convert`: transcoders and
attention-output SAEs."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from circuits.cli.runtime import add_device_option, resolve_device
from circuits.errors import CircuitsError


def organism_dictionary_configs(model, d_sae: int, k: int) -> list:
    """One BatchTopK transcoder per MLP and one attention SAE per attention layer."""
    from circuits.dictionaries.base import DictionaryConfig

    c = model.cfg
    z = c.n_heads * c.d_head
    configs = []
    for layer in range(c.n_layers):
        configs.append(DictionaryConfig("attention_sae", layer, z, d_sae, z, activation="batchtopk", k=k,
                                        n_heads=c.n_heads, context_size=c.n_ctx, model_name="organism"))
        configs.append(DictionaryConfig("transcoder", layer, c.d_model, d_sae, c.d_model, activation="batchtopk",
                                        k=k, context_size=c.n_ctx, model_name="organism"))
    return configs


def _site_values(specs: list[str] | None, flag: str, what: str, names: set[str], parse) -> dict:
    """{dictionary name: value} from repeated NAME=VALUE options; `parse` returns None for a bad value."""
    out = {}
    for spec in specs or []:
        name, _, raw = spec.partition("=")
        value = parse(raw)
        if value is None or name not in names:
            raise CircuitsError(f"{flag} {spec!r}: use NAME=VALUE with NAME one of {', '.join(sorted(names))} "
                                f"and VALUE {what}")
        out[name] = value
    return out


def _check_names(args, reads: str | None = None) -> None:
    """--model and --dicts name a known model / set or an existing folder: a typo is one line before the model loads
    (which takes seconds). `reads` (what the command reads from the organism's corpus): a model without that
    corpus (GPT-2, a public model, a saved family model) is refused, since its tokens would be the organism's."""
    from circuits.cli.trace_checks import check_dicts_name, check_model_name
    from circuits.families import PUBLIC_MODELS, is_saved_model

    check_model_name(args.model)
    if reads and (args.model == "gpt2" or args.model in PUBLIC_MODELS or is_saved_model(Path(args.model))):
        raise CircuitsError(f"{reads} the organism's corpus, which {args.model!r} has not; use --model organism (or "
                            "an organism folder)")
    check_dicts_name(args.dicts)


def _check_sites(args, names: set[str]) -> tuple[dict, dict]:
    """--sites, --site-d-sae and --site-activation against the dictionaries' names: ({name: d_sae}, {name:
    activation})."""
    site_d_sae = _site_values(args.site_d_sae, "--site-d-sae", "a positive integer", names,
                              lambda v: int(v) if v.isdigit() and int(v) > 0 else None)
    site_act = _site_values(args.site_activation, "--site-activation", "topk or batchtopk", names,
                            lambda v: v if v in ("topk", "batchtopk") else None)
    if args.sites:
        if args.export:
            raise CircuitsError("--export writes the whole organism set; it cannot be combined with --sites")
        unknown = sorted(set(args.sites) - names)
        if unknown:
            raise CircuitsError(f"--sites: unknown {', '.join(unknown)}; use {', '.join(sorted(names))}")
    return site_d_sae, site_act


def cmd_dicts_train(args) -> int:
    if args.model != "organism":
        raise CircuitsError(f"training is set up for the organism's corpus only, not {args.model!r}; "
                            "use --model organism")
    from circuits.inputs import check_output_dir

    for flag, v in (("--tokens", args.tokens), ("--d-sae", args.d_sae), ("--k", args.k)):
        if v < 1:
            raise CircuitsError(f"{flag} {v}: must be at least 1")
    if len(set(args.corpus_phases)) != len(args.corpus_phases) or not all(1 <= p <= 5 for p in args.corpus_phases):
        raise CircuitsError(f"--phases {' '.join(map(str, args.corpus_phases))}: use distinct training "
                            "phases 1-5, e.g. --phases 3 5")
    if not args.lr > 0:
        raise CircuitsError(f"--lr {args.lr}: must be positive")
    if args.init_from and args.clt:
        raise CircuitsError("--init-from continues per-site dictionaries; it cannot be combined with --clt")
    if args.clt:
        bad = [flag for flag, v in (("--skip-transcoders", args.skip_transcoders), ("--sites", args.sites),
                                    ("--site-d-sae", args.site_d_sae), ("--site-activation", args.site_activation),
                                    ("--export", args.export)) if v]
        if bad:
            raise CircuitsError(f"--clt trains one cross-layer transcoder over every MLP (--d-sae features and --k "
                                f"active per token in each layer); it cannot be combined with {', '.join(bad)}")
    from circuits.cli.trace_checks import check_dicts_name, organism_vocab

    # a mistyped site is refused before the model loads, by the names the organism's config file gives (a config
    # it cannot read: the loader names that problem first); the model's own names check them again below
    vocab = organism_vocab("organism")
    if vocab is not None:
        _check_sites(args, {f"{kind}_L{layer}" for layer in range(vocab.n_layers) for kind in ("attn_sae", "transcoder")})
    if args.init_from:
        check_dicts_name(args.init_from, "--init-from")
    from circuits.dictionaries.dictset import DictionarySet
    from circuits.dictionaries.train import DictTrainConfig, train_dictionaries
    from circuits.model import DATA_DIR, load_model

    check_output_dir(args.out, "--out")
    if args.export:
        check_output_dir(DATA_DIR / "dictionaries" / "organism-base", "--export")
    model, _ = load_model("organism", resolve_device(args.device))
    init_from = None
    if args.init_from:
        from circuits.dictionaries import load_dictionaries

        init_from = {d.cfg.name: d for d in load_dictionaries(args.init_from, model)}
    cfg = DictTrainConfig(total_tokens=args.tokens, seed=args.seed, aux_coef=args.aux_coef, lr=args.lr,
                          corpus_seed=args.corpus_seed, corpus_phases=tuple(args.corpus_phases),
                          dead_after_tokens=args.dead_after, resample_every=args.resample_every,
                          resample_until=args.resample_until, resample_dead_after_tokens=args.resample_dead_after,
                          resample_scale=args.resample_scale, calibrate_tokens=args.calibrate_tokens)
    if args.clt:
        return _train_clt(model, args, cfg)
    configs = organism_dictionary_configs(model, args.d_sae, args.k)
    site_d_sae, site_act = _check_sites(args, {c.name for c in configs})
    configs = [dataclasses.replace(c, d_sae=site_d_sae.get(c.name, c.d_sae),
                                   activation=site_act.get(c.name, c.activation),
                                   skip=args.skip_transcoders and c.kind == "transcoder") for c in configs]
    if args.sites:
        configs = [c for c in configs if c.name in args.sites]
    dicts = train_dictionaries(model, configs, Path(args.out), cfg, resume=not args.no_resume,
                               progress=not args.quiet, init_from=init_from)
    dset = DictionarySet("organism", dicts)
    dset.save(Path(args.out) / "set")
    print(f"saved {len(dset)} dictionaries to {Path(args.out) / 'set'}")
    if args.export:
        dest = DATA_DIR / "dictionaries" / "organism-base"
        dset.save(dest)
        shutil.copy2(Path(args.out) / "dict_log.jsonl", dest / "train_log.jsonl")
        print(f"exported to {dest}")
    return 0


def _train_clt(model, args, cfg) -> int:
    """`dicts train --clt`: one BatchTopK cross-layer transcoder over every MLP, saved as OUT/set/clt."""
    from circuits.dictionaries.clt import CLTConfig
    from circuits.dictionaries.dictset import DictionarySet
    from circuits.dictionaries.train_clt import train_clt

    c = model.cfg
    clt_cfg = CLTConfig(c.n_layers, c.d_model, args.d_sae, activation="batchtopk", k=args.k, context_size=c.n_ctx,
                        model_name="organism")
    clt = train_clt(model, clt_cfg, Path(args.out), cfg, resume=not args.no_resume, progress=not args.quiet)
    folder = DictionarySet("organism", {"clt": clt}).save(Path(args.out) / "set")
    print(f"saved a cross-layer transcoder ({c.n_layers} layers x {args.d_sae} features) to {folder}")
    return 0


def _print_fidelity(report: dict) -> None:
    from circuits.dictionaries.evaluate import check_targets

    ok = check_targets(report)
    cols = ("l0", "fvu", "dead", "dead_scored", "ce_increase", "zero_ablation_cost", "ce_recovered_zero", "ce_recovered_mean", "kl",
            "ioi_ld_retained")
    print(f"{'dictionary':<14} " + " ".join(f"{c[:12]:>12}" for c in cols) + "  targets")
    rows = list(report["dictionaries"].items()) + [("ALL", report["all"])]
    for name, m in rows:
        vals = " ".join(f"{m[c]:>12.4f}" if c in m else f"{'':>12}" for c in cols)
        verdict = ok.get(name if name != "ALL" else "all")
        print(f"{name:<14} {vals}  {'met' if verdict else 'MISSED'}")
    print(f"clean CE {report['all']['ce_clean']:.4f} nats/token; IOI logit diff clean "
          f"{report['all']['ioi_ld_clean']:.3f}, all spliced {report['all']['ioi_ld_spliced']:.3f}")


def fidelity_output(args) -> str:
    """Where `dicts eval` writes: ``--out`` when given ('-': nowhere); otherwise, for a full-size evaluation, the
    set's own ``fidelity.json`` (a shipped organism set's, which it reproduces, or a set folder's); a subsample
    (``--rows`` / ``--dead-rows``) or another model's named set is not saved (it must not replace a shipped report)."""
    from circuits.model import DATA_DIR

    if args.out is not None:
        return args.out
    if args.rows is not None or args.dead_rows is not None:
        return "-"
    name = shipped_set(args.dicts)
    if name is not None:  # a shipped set, by name or by its folder: only its own report, only for the organism
        report = DATA_DIR / "dictionaries" / name / "fidelity.json"
        return str(report) if args.model == "organism" and report.exists() else "-"
    folder = Path(args.dicts)
    return str(folder / "fidelity.json") if folder.is_dir() else "-"


def shipped_set(dicts: str) -> str | None:
    """The shipped organism set that `dicts` names, by name, alias or folder (``data/dictionaries/organism``), or
    None."""
    from circuits.dictionaries import ORGANISM_ALIASES, ORGANISM_SETS
    from circuits.model import DATA_DIR

    name = ORGANISM_ALIASES.get(dicts, dicts)
    if name in ORGANISM_SETS:
        return name
    try:
        folder = Path(dicts).resolve()
    except OSError:
        return None
    for name in ORGANISM_SETS:
        if folder == (DATA_DIR / "dictionaries" / name).resolve():
            return name
    return None


def cmd_dicts_eval(args) -> int:
    defaulted, args.out = args.out is None, fidelity_output(args)
    if args.out != "-":
        from circuits.inputs import check_output_file

        check_output_file(args.out, "--out", kind="json")
    for flag, v in (("--rows", args.rows), ("--dead-rows", args.dead_rows)):
        if v is not None and v < 1:
            raise CircuitsError(f"{flag} {v}: must be at least 1")
    _check_names(args, "the fidelity report reads")  # before the imports: torch alone takes seconds
    from circuits.dictionaries import load_dictionaries
    from circuits.dictionaries.evaluate import FidelitySizes, evaluate_fidelity
    from circuits.model import load_model

    model, _ = load_model(args.model, resolve_device(args.device))
    dset = load_dictionaries(args.dicts, model)
    sizes = FidelitySizes() if args.rows is None else FidelitySizes(rows=args.rows, mean_rows=args.rows,
                                                                   ioi_prompts=args.rows)
    if args.dead_rows is not None:
        sizes = dataclasses.replace(sizes, dead_rows=args.dead_rows)
    report = evaluate_fidelity(model, dset, sizes, progress=not args.quiet)
    _print_fidelity(report)
    if shipped_set(args.dicts) is not None and args.rows is None:  # a shipped set: tests re-evaluate this subsample
        from circuits.dictionaries.evaluate import CI_SIZES

        report["ci_subsample"] = {"sizes": CI_SIZES.__dict__, "report": evaluate_fidelity(model, dset, CI_SIZES)}
    if args.out != "-":
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(out)
        print(f"wrote {out}")
    elif defaulted:
        print("not saved (a subsample or another model's set never replaces a report): pass --out FILE")
    return 0


def cmd_dicts_finetune(args) -> int:
    """`dicts finetune`: fine-tune a whole set through the model (`circuits.dictionaries.finetune`)."""
    _check_names(args, "the fine-tune streams")  # before the imports: torch alone takes seconds
    from circuits.dictionaries.finetune import FinetuneConfig
    from circuits.inputs import check_output_dir

    cfg = FinetuneConfig(steps=args.steps, rows=args.rows, lr=args.lr, beta=args.beta, seed=args.seed,
                         answer_weight=args.answer_weight, answer_space=args.answer_space,
                         temperature=args.temperature, encoder_lr_scale=args.encoder_lr_scale,
                         keep_codes=args.keep_codes,
                         calibrate_rows=args.calibrate_rows,
                         corpus_phases=tuple(args.phases))
    cfg.check()  # bad numbers: one line, before the model loads
    out = check_output_dir(args.out, "--out")
    from circuits.dictionaries import load_dictionaries
    from circuits.dictionaries.finetune import finetune_set
    from circuits.model import load_model

    model, _ = load_model(args.model, resolve_device(args.device))
    dset = load_dictionaries(args.dicts, model)
    finetune_set(model, dset, cfg, out, progress=not args.quiet, resume=not args.no_resume)
    print(f"saved {len(dset)} fine-tuned dictionaries to {out / 'set'} (log: {out / 'finetune_log.jsonl'}); "
          f"measure them with `circuits dicts eval --dicts {out / 'set'} --out FILE`")
    return 0


def _save_set(dset, out: Path, float16: bool, record_name: str, record: dict) -> None:
    """Save a post-processed set to `out` (float16 weights if asked) with a JSON record of how it was made."""
    dset.save(out)
    if float16:
        from circuits.dictionaries.io import store_float16

        store_float16(out)
    (out / record_name).write_text(json.dumps(record, indent=2))


def cmd_dicts_fit_skip(args) -> int:
    """`dicts fit-skip`: add a least-squares skip term to transcoders of a set (`circuits.dictionaries.skipfit`)."""
    return _least_squares_fit(args, "skip")


def cmd_dicts_fit_decoder(args) -> int:
    """`dicts fit-decoder`: refit decoders of a set by least squares, codes fixed (`skipfit.fit_decoder`)."""
    return _least_squares_fit(args, "decoder")


def _least_squares_fit(args, part: str) -> int:
    """The two least-squares fits onto a set's errors: a skip term (``part`` "skip") or the decoders ("decoder")."""
    _check_names(args)  # before the imports: torch alone takes seconds
    from circuits.dictionaries.skipfit import DecoderFitConfig, SkipFitConfig
    from circuits.inputs import check_output_dir

    if args.model != "organism":
        raise CircuitsError(f"the {part} fit reads the organism's corpus and IOI prompts, not {args.model!r}'s; "
                            "use --model organism")
    cfg = (SkipFitConfig if part == "skip" else DecoderFitConfig)(
        sites=tuple(args.sites), rows=args.rows, ioi_prompts=args.ioi_prompts, ioi_weight=args.ioi_weight,
        ioi_positions=args.ioi_positions, ridge=args.ridge, corpus_phases=tuple(args.phases),
        ioi_templates=tuple(args.ioi_templates) if args.ioi_templates else None)
    cfg.check()  # bad numbers: one line, before the model loads
    out = check_output_dir(args.out, "--out", force=args.force)
    from circuits.dictionaries import load_dictionaries
    from circuits.dictionaries.skipfit import fit_decoder, fit_skip
    from circuits.model import load_model

    model, _ = load_model(args.model, resolve_device(args.device))
    dset = load_dictionaries(args.dicts, model)  # the fit checks its sites against the set before any token pass
    new, report = (fit_skip if part == "skip" else fit_decoder)(model, dset, cfg, progress=not args.quiet)
    _save_set(new, out, args.float16, f"{part}_fit.json", {"source": args.dicts, "config": dataclasses.asdict(cfg),
                                                           "dictionaries": report})
    for name, r in report.items():
        ratio = r["weighted_sq_error_after"] / max(r["weighted_sq_error_before"], 1e-30)
        print(f"{name:14s} weighted squared error on the fit tokens x {ratio:.3f}")
    print(f"saved {len(new)} dictionaries to {out}; measure them with `circuits dicts eval --dicts {out} --out FILE`")
    return 0


def cmd_dicts_calibrate(args) -> int:
    """`dicts calibrate`: shift every threshold of a set to one mean L0 (`circuits.dictionaries.calibrate`)."""
    _check_names(args)  # before the imports: torch alone takes seconds
    from circuits.dictionaries.calibrate import CalibrateConfig
    from circuits.inputs import check_output_dir

    if args.model != "organism":
        raise CircuitsError(f"calibration reads the organism's corpus, not {args.model!r}'s; use --model organism")
    cfg = CalibrateConfig(target_l0=args.l0, rows=args.rows)
    cfg.check()  # bad numbers: one line, before the model loads
    out = check_output_dir(args.out, "--out", force=args.force)
    from circuits.dictionaries import load_dictionaries
    from circuits.dictionaries.calibrate import calibrate_set
    from circuits.model import load_model

    model, _ = load_model(args.model, resolve_device(args.device))
    dset = load_dictionaries(args.dicts, model)
    report = calibrate_set(model, dset, cfg)
    _save_set(dset, out, args.float16, "calibration.json", {"source": args.dicts, "config": dataclasses.asdict(cfg),
                                                             "dictionaries": report})
    for name, r in report.items():
        print(f"{name:14s} L0 {r['l0_before']:6.2f} -> {r['l0_after']:6.2f}")
    print(f"saved {len(dset)} dictionaries to {out}; measure them with `circuits dicts eval --dicts {out} --out FILE`")
    return 0


def cmd_dicts_convert(args) -> int:
    from circuits.dictionaries import load_folder
    from circuits.inputs import check_output_dir

    out = check_output_dir(args.out, "--out", force=args.force)
    dset = load_folder(Path(args.src), n_heads=args.n_heads, model_name=args.model_name)
    dset.save(out)
    print(f"converted {len(dset)} dictionaries ({', '.join(d.cfg.name for d in dset)}) to {out}")
    return 0


def add_parser(sub) -> None:
    """`dicts` and its actions."""
    dicts = sub.add_parser("dicts", help="transcoders and attention-output SAEs").add_subparsers(dest="action",
                                                                                              required=True)
    t = dicts.add_parser("train", help="train every dictionary of a model on its corpus (resumable)")
    t.add_argument("--model", default="organism", help="organism (the only model with a corpus here)")
    t.add_argument("--out", default="runs/dicts", help="run folder (checkpoints, logs; the set in OUT/set)")
    t.add_argument("--tokens", type=int, default=4_000_000, help="activations per dictionary")
    t.add_argument("--d-sae", type=int, default=2048, help="features per dictionary (see --site-d-sae)")
    t.add_argument("--k", type=int, default=30, help="BatchTopK mean active features per token")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--site-d-sae", action="append", metavar="NAME=N",
                   help="features for one dictionary, e.g. transcoder_L3=4096 (repeatable)")
    t.add_argument("--site-activation", action="append", metavar="NAME=ACT",
                   help="training activation for one dictionary: batchtopk (default; saved as JumpReLU with its "
                   "learned threshold) or topk (exactly k features per token), e.g. transcoder_L3=topk (repeatable)")
    t.add_argument("--skip-transcoders", action="store_true", help="train skip transcoders: each transcoder's "
                   "output adds a linear term W_skip·x of its input (Paulo et al. 2025)")
    t.add_argument("--clt", action="store_true", help="train one cross-layer transcoder over every MLP instead "
                   "(--d-sae features and --k active per token in each layer; attention SAEs are not trained); "
                   "saved as OUT/set/clt")
    t.add_argument("--sites", nargs="+", metavar="NAME", help="train only these dictionaries (e.g. transcoder_L3); "
                   "default: all (same activation stream; initial weights differ from a full run)")
    t.add_argument("--aux-coef", type=float, default=1 / 32, help="AuxK loss weight")
    t.add_argument("--dead-after", type=int, default=200_000, help="tokens without firing before AuxK treats a "
                   "feature as dead")
    t.add_argument("--resample-every", type=int, default=0, help="steps between resampling dead features "
                   "(0 = never; AuxK only)")
    t.add_argument("--resample-until", type=float, default=0.7, help="fraction of the run after which nothing "
                   "is resampled")
    t.add_argument("--resample-dead-after", type=int, default=100_000, help="tokens without firing before a "
                   "feature is resampled")
    t.add_argument("--resample-scale", type=float, default=0.2, help="resampled encoder norm / mean live "
                   "encoder norm")
    t.add_argument("--calibrate-tokens", type=int, default=0, help="BatchTopK: after training, set the inference "
                   "threshold so that L0 = k on this many training tokens (0 = keep the running threshold)")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (linear decay over the last 20%%)")
    t.add_argument("--corpus-seed", type=int, default=1, help="corpus stream the activations come from (1 by "
                   "default; a continuation uses another one so that it sees new rows)")
    t.add_argument("--phases", dest="corpus_phases", type=int, nargs="+", default=[3, 5], metavar="P", help="organism "
                   "training phases whose rows are streamed, block by block (default 3 5: the natural mix and the "
                   "template/slot-noised IOI mix)")
    t.add_argument("--init-from", metavar="SET", help="continue from a trained set (a name or folder): each trained "
                   "dictionary starts from the one of the same name and shape there instead of a random init")
    t.add_argument("--no-resume", action="store_true")
    t.add_argument("--export", action="store_true", help="write the set to data/dictionaries/organism-base (the default set "
                   "starts from it: docs/dictionaries.md#training)")
    t.add_argument("--quiet", action="store_true")
    add_device_option(t)
    t.set_defaults(func=cmd_dicts_train)

    e = dicts.add_parser("eval", help="fidelity report: L0, FVU, dead, CE spliced/ablated, KL, IOI")
    e.add_argument("--model", default="organism", help="organism or an organism folder (the report reads the "
                   "organism's corpus)")
    e.add_argument("--dicts", default="organism", help="organism, gpt2-transcoders, gpt2-attn-kk or a folder")
    e.add_argument("--out", default=None, help="JSON report ('-': none; default: the set's own fidelity.json for a "
                   "full-size run, which for a shipped set it reproduces; a subsample is not saved)")
    e.add_argument("--rows", type=int, default=None, help="held-out rows (default 256)")
    e.add_argument("--dead-rows", type=int, default=None,
                   help="held-out rows over which a feature must fire once not to count as dead (default 8192)")
    e.add_argument("--quiet", action="store_true")
    add_device_option(e)
    e.set_defaults(func=cmd_dicts_eval)

    f = dicts.add_parser("finetune", help="fine-tune a whole set through the model: KL(clean || all spliced) + "
                         "beta * sum of FVUs (resumable)")
    f.add_argument("--model", default="organism", help="organism or an organism folder (the fine-tune streams the "
                   "organism's corpus)")
    f.add_argument("--dicts", default="organism-base", help="a set name or a set folder (default organism-base: the "
                   "set as first trained)")
    f.add_argument("--out", required=True, help="folder for the log, the checkpoint and the fine-tuned set (OUT/set)")
    f.add_argument("--steps", type=int, default=300, help="optimiser steps")
    f.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (linear decay over the last 20%%)")
    f.add_argument("--beta", type=float, default=1.0, help="weight of the summed per-dictionary FVU against the KL")
    f.add_argument("--answer-weight", type=float, default=0.0, help="weight of a third term: each dictionary's FVU "
                   "on clean inputs at the positions whose next token is a name already in the document (an IOI "
                   "answer is one), i.e. the error nodes of such a graph (default 0: off; organism only)")
    f.add_argument("--answer-space", choices=["activation", "name_logits"], default="activation", help="the answer "
                   "term's FVU over each dictionary's output (default) or over its direct effect on the names' logits")
    f.add_argument("--temperature", type=float, default=1.0, help="KL between softmax(logits / T), times T^2 "
                   "(T > 1 also sees logit differences the clean model is already sure of; default 1: plain KL)")
    f.add_argument("--keep-codes", action="store_true", help="with --encoder-lr-scale 0: every code on clean "
                   "inputs stays the input set's (an attention SAE's b_dec move, its input centring, is folded into "
                   "b_enc after each step)")
    f.add_argument("--encoder-lr-scale", type=float, default=1.0, help="encoder lr (W_enc, b_enc, b_in) relative "
                   "to --lr; 0 trains the decoders only: a transcoder's codes on clean inputs (L0, dead) stay as they were (an "
                   "attention SAE's b_dec also centres its input, so its codes can still move a little)")
    f.add_argument("--phases", type=int, nargs="+", default=[3, 5], metavar="P",
                   help="organism corpus phases streamed block by block (default 3 5, as dictionary training)")
    f.add_argument("--rows", type=int, default=16, help="corpus rows (of the model's context length) per step")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--calibrate-rows", type=int, default=64, help="rows for the final L0 check (thresholds are "
                   "shifted back to the input set's L0 if it drifted by more than 5%%); 0 = keep thresholds")
    f.add_argument("--no-resume", action="store_true")
    f.add_argument("--quiet", action="store_true")
    add_device_option(f)
    f.set_defaults(func=cmd_dicts_finetune)

    k = dicts.add_parser("fit-skip", help="add a skip term W_skip to transcoders of a set by weighted least squares "
                         "on their errors (corpus tokens + IOI training-template prompts); features unchanged")
    _add_fit_options(k, ["transcoder_L3"], "transcoders to fit (default transcoder_L3)", "answer", 1e-4,
                     "ridge penalty on W_skip, relative to the mean input energy")
    k.set_defaults(func=cmd_dicts_fit_skip)
    k = dicts.add_parser("fit-decoder", help="refit the decoders (W_dec, b_dec) of dictionaries of a set by weighted "
                         "least squares on their errors (corpus tokens + IOI training-template prompts); every code "
                         "unchanged (up to rounding with --float16)")
    _add_fit_options(k, ["attn_sae_L0"], "per-layer dictionaries to refit (default attn_sae_L0)", "all", 1e-2,
                     "ridge penalty on the decoder change, relative to the mean code energy (a rarely firing "
                     "feature's row stays near where it was)")
    k.set_defaults(func=cmd_dicts_fit_decoder)

    c = dicts.add_parser("calibrate", help="shift the thresholds of a set so that every dictionary has one mean L0 "
                         "on clean inputs (spends an L0 budget on reconstruction; encoders and decoders unchanged)")
    c.add_argument("--model", default="organism", help="organism (the only model with a corpus here)")
    c.add_argument("--dicts", default="organism", help="a set name or a set folder")
    c.add_argument("--l0", type=float, required=True, help="mean active features per token, e.g. 31")
    c.add_argument("--out", required=True, help="folder for the calibrated set (and calibration.json)")
    c.add_argument("--rows", type=int, default=128, help="corpus rows the L0 is measured on (fine-tune stream, "
                   "far past its training rows)")
    c.add_argument("--float16", action="store_true", help="store the weights in float16 (as the shipped sets)")
    c.add_argument("--force", action="store_true", help="write into a non-empty folder")
    add_device_option(c)
    c.set_defaults(func=cmd_dicts_calibrate)

    v = dicts.add_parser("convert", help="convert public dictionary files to our (SAELens) layout")
    v.add_argument("src", help="a Dunefsky/Kissane .pt folder, a SAELens folder or a circuit-tracer folder")
    v.add_argument("--out", required=True, help="folder for the converted set (load it with --dicts OUT)")
    v.add_argument("--n-heads", type=int, default=None, help="heads of the model (attention SAEs on hook_z)")
    v.add_argument("--model-name", default=None, help="model the dictionaries belong to, for sources "
                   "that do not say it (a folder with a set.json keeps its own; default: as the source files say)")
    v.add_argument("--force", action="store_true", help="write into a non-empty folder")
    v.set_defaults(func=cmd_dicts_convert)


def _add_fit_options(k, sites: list[str], sites_help: str, positions: str, ridge: float, ridge_help: str) -> None:
    """The options `dicts fit-skip` and `dicts fit-decoder` share (`skipfit.SkipFitConfig`)."""
    k.add_argument("--model", default="organism", help="organism (the only model with a corpus here)")
    k.add_argument("--dicts", default="organism", help="a set name or a set folder")
    k.add_argument("--out", required=True, help="folder for the new set (and its fit record)")
    k.add_argument("--sites", nargs="+", default=sites, metavar="SITE", help=sites_help)
    k.add_argument("--rows", type=int, default=2560, help="corpus rows (weight 1 per token)")
    k.add_argument("--phases", type=int, nargs="+", default=[3, 5], metavar="P", help="organism corpus phases, "
                   "block by block (default 3 5: natural text and the IOI mix)")
    k.add_argument("--ioi-prompts", type=int, default=600, help="IOI prompts per name order (training templates, "
                   "held-out names)")
    k.add_argument("--ioi-weight", type=float, default=100.0, help="weight of each IOI token against a corpus token")
    k.add_argument("--ioi-positions", choices=["answer", "all"], default=positions,
                   help=f"IOI tokens fitted: each prompt's last position or every position (default {positions})")
    k.add_argument("--ioi-templates", type=int, nargs="+", default=None, metavar="T", help="only these training "
                   "templates (indices 0-15) for the IOI prompts (default: all)")
    k.add_argument("--ridge", type=float, default=ridge, help=ridge_help)
    k.add_argument("--float16", action="store_true", help="store the weights in float16 (as the shipped sets)")
    k.add_argument("--force", action="store_true", help="write into a non-empty folder")
    k.add_argument("--quiet", action="store_true")
    add_device_option(k)
