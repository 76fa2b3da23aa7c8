"""The checks `circuits trace` makes on its input before any expensive work: option combinations, the dictionary
set's name, and, for the organism, the prompt's tokens, the target tokens and `--feature` ids, from the tokenizer
file and the set's config files alone (no model load). For other models the same token and feature checks run
right after the model loads, before attribution (`cmd_trace` in `circuits.cli.trace`).

`organism_vocab`, `set_shapes` and `check_feature` are shared with `circuits feature` and `circuits attention`,
which check their ids, heads and positions the same way before their model loads."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from circuits.errors import CircuitsError


def _parse_feature(spec: str):
    """--feature: a feature at a position, canonical ``M2#517@11`` (old ``mlp:2:11:517`` accepted)."""
    from circuits.ids import NodeIdError, parse_feature

    try:
        ref = parse_feature(spec)
    except NodeIdError as e:
        raise CircuitsError(f"--feature: {e}") from None
    if ref.pos is None:
        raise CircuitsError(f"--feature {spec!r} needs the position of the feature: write e.g. {ref}@11 "
                            "(or KIND:LAYER:POS:INDEX, e.g. mlp:2:11:517)")
    return ref.node()


def _one_each(args) -> None:
    """--target, --contrast and --feature are given at most once (argparse would keep only the last one, silently);
    afterwards each holds its single value as before (--target: its list of tokens)."""
    for attr in ("target", "contrast", "feature"):
        given = getattr(args, attr)
        if given is None:
            continue
        if len(given) > 1:
            flag = f"--{attr}"
            times = "twice" if len(given) == 2 else f"{len(given)} times"
            shown = ", ".join(repr(" ".join(g) if isinstance(g, list) else g) for g in given)
            if attr == "target":
                raise CircuitsError(f"--target given {times} ({shown}): give one --target (several tokens go after "
                                    f"one: --target {given[0][0]} {given[1][0]}); for a difference use --target "
                                    f"{given[0][0]} --contrast {given[1][0]}")
            raise CircuitsError(f"{flag} given {times} ({shown}): give one {flag}")
        setattr(args, attr, given[0])


def _check_trace_options(args) -> None:
    """Every option of `trace` that can be checked without the model, before it loads."""
    from circuits.inputs import check_output_file

    _one_each(args)
    for flag, tokens in (("--target", args.target or []), ("--contrast", [args.contrast] if args.contrast is not None
                                                                           else [])):
        for token in tokens:
            if not token.strip():
                raise CircuitsError(f"{flag} {token!r}: empty; give a token, e.g. {flag} Mary")
    if args.contrast is not None and args.target and len(args.target) == 1 \
            and args.contrast.strip() == args.target[0].strip():
        raise CircuitsError(f"--contrast {args.contrast!r} is the same token as --target {args.target[0]!r}: a "
                            "contrast explains logit(A) − logit(B) and needs two different tokens")
    for flag, value in (("--node-threshold", args.node_threshold), ("--edge-threshold", args.edge_threshold)):
        if not 0 < value <= 1:
            raise CircuitsError(f"{flag} {value}: must be in (0, 1] (the fraction of influence to keep)")
    if not 0 < args.cum_prob <= 1:
        raise CircuitsError(f"--cum-prob {args.cum_prob}: must be in (0, 1] (the probability mass of the logits "
                            "to explain)")
    if args.max_logits < 1:
        raise CircuitsError(f"--max-logits {args.max_logits}: must be at least 1")
    if args.max_features is not None and args.max_features < 0:
        raise CircuitsError(f"--max-features {args.max_features}: must be 0 or more")
    if args.edge_tolerance < 0 or args.edge_tolerance >= 1:
        raise CircuitsError(f"--edge-tolerance {args.edge_tolerance}: must be in [0, 1)")
    if args.top < 0:
        raise CircuitsError(f"--top {args.top}: must be 0 or more")
    if args.ig_steps < 0:
        raise CircuitsError(f"--ig-steps {args.ig_steps}: must be 0 or more")
    if args.corrupt is not None:
        from circuits.errors import AttributionError
        from circuits.inputs import check_text

        try:
            check_text(args.corrupt, "the --corrupt prompt")
        except AttributionError as e:
            raise CircuitsError(str(e)) from None
    if args.ig_steps and not args.corrupt:
        raise CircuitsError("--ig-steps needs --corrupt PROMPT (integrated gradients between two prompts)")
    if args.corrupt is not None and args.prompt and args.corrupt == args.prompt:
        raise CircuitsError("--corrupt is the prompt itself: attribution patching would find no difference; give a "
                            "prompt that changes what decides the answer (e.g. one name swapped for another)")
    if args.corrupt is not None and args.feature:
        raise CircuitsError("--corrupt needs a logit target (--target, with or without --contrast), not --feature: "
                            "attribution patching moves a logit metric between the two prompts")
    if args.paths < 0:
        raise CircuitsError(f"--paths {args.paths}: must be 0 or more")
    if args.qk_heads < 1:
        raise CircuitsError(f"--qk-heads {args.qk_heads}: must be at least 1")
    drawer = "dot" if args.detail == "full" else "neato"
    if (args.svg or args.png) and shutil.which(drawer) is None:
        raise CircuitsError(f"--svg/--png need Graphviz's `{drawer}`, which is not installed: install it (apt-get "
                            "install graphviz, brew install graphviz) or write --dot FILE and render it elsewhere")
    if args.dashboards:
        check_database_file(args.dashboards, "--dashboards", "leave the option out")
    written = {"json": "circuits-graph", "dot": "dot", "svg": "svg", "png": "png", "graphml": "graphml",
               "circuit_tracer_json": "circuit-tracer"}
    seen: dict[Path, str] = {}
    for flag, kind in written.items():
        path = getattr(args, flag)
        if path:
            option = f"--{flag.replace('_', '-')}"
            # the graph writers do not create folders: a missing one fails now, not after the attribution
            resolved = check_output_file(path, option, folder_must_exist=True, kind=kind,
                                         force=args.force).resolve()
            if resolved in seen:
                raise CircuitsError(f"{seen[resolved]} and {option} name the same file {path}: give each its own "
                                    "file (the second would overwrite the first)")
            seen[resolved] = option


@dataclass(frozen=True)
class TargetSpec:
    """What `trace` was asked to explain, as plain values: checked before torch is imported, then `build` makes the
    attribution target (`circuits.attribution`'s Logit, Contrast, FeatureTarget or TopLogits)."""

    kind: str  # "logit", "contrast", "feature" or "top"
    tokens: tuple[str, ...] = ()
    baseline: str | None = None
    node: object = None  # a circuits.nodes.Node for "feature"
    cum_prob: float = 0.0
    max_logits: int = 0

    def build(self):
        from circuits.attribution import Contrast, FeatureTarget, Logit, TopLogits

        if self.kind == "contrast":
            return Contrast(self.tokens[0], self.baseline)
        if self.kind == "logit":
            return Logit(self.tokens)
        if self.kind == "feature":
            return FeatureTarget(self.node)
        return TopLogits(self.cum_prob, self.max_logits)


def _trace_target(args) -> TargetSpec:
    if args.feature and (args.target or args.contrast):
        raise CircuitsError("give either --feature or --target/--contrast, not both")
    if args.contrast:
        if not args.target or len(args.target) != 1:
            raise CircuitsError("--contrast B needs exactly one --target A (the graph explains logit(A) − logit(B))")
        return TargetSpec("contrast", (args.target[0],), args.contrast)
    if args.target:
        return TargetSpec("logit", tuple(args.target))
    if args.feature:
        return TargetSpec("feature", node=_parse_feature(args.feature))
    return TargetSpec("top", cum_prob=args.cum_prob, max_logits=args.max_logits)


def _choose_dicts(args) -> None:
    """--dicts left out: the organism's set. For a public model (whose widths the organism's set never fits) that
    is an error now, naming the model's own sets, instead of a width mismatch after loading the model."""
    args.dicts_given = args.dicts is not None
    if args.dicts_given:
        return
    from circuits.dictionaries import PUBLIC_SETS
    from circuits.families import PUBLIC_MODELS

    sets = {"gpt2": tuple(PUBLIC_SETS), **{k: m.dictionary_sets for k, m in PUBLIC_MODELS.items()}}.get(args.model)
    if sets:
        raise CircuitsError(f"--model {args.model} needs --dicts: the default set, organism, is the organism's; pass "
                            f"--dicts SET_OR_FOLDER for this model (e.g. {', '.join(sets)})")
    args.dicts = "organism"


def check_database_file(path: str | Path, option: str, alternative: str,
                        build: str = "`circuits dashboards build`") -> None:
    """`path` is an existing SQLite file (what `circuits dashboards build` writes), checked by its first bytes before
    anything loads; one line naming the option and `alternative` otherwise."""
    from circuits.inputs import KIND_NAMES, file_kind

    if not Path(path).is_file():
        raise CircuitsError(f"{option}: no dashboard database at {path}; build one with {build} or {alternative}")
    kind = file_kind(path)
    if kind != "sqlite":
        raise CircuitsError(f"{option} {path}: {'an empty file' if kind is None else KIND_NAMES[kind]}, not a "
                            "dashboard database; give the path of one built by `circuits dashboards build`")


def check_model_name(name: str) -> None:
    """--model names a model `load_model` knows or an existing folder (`circuits.model.check_model_name`, the
    loader's own test, without importing torch): a typo is one line before anything prints "loading"."""
    from circuits.errors import ModelLoadError
    from circuits.model import check_model_name as check

    try:
        check(name)
    except ModelLoadError as e:
        raise CircuitsError(f"--model: {e}") from None


def check_dicts_name(name: str, flag: str = "--dicts") -> None:
    """--dicts (or `flag`) names a known set or a folder holding dictionary files
    (`circuits.dictionaries.check_set_name`, before the model loads; the files themselves are read and checked by
    `load_dictionaries`)."""
    from circuits.dictionaries import DictionaryLoadError, check_set_name

    try:
        check_set_name(name)
    except DictionaryLoadError as e:
        raise CircuitsError(f"{flag} {e}") from None


@dataclass(frozen=True)
class _Vocab:
    """What the input checks need from a model: its tokenizer (as the replacement model tokenizes) and sizes."""

    n_tokens: Callable[[str], int]  # a prompt's tokens, BOS included
    encode: Callable[[str], list[int]]  # text → token ids, no BOS
    pieces: Callable[[str], list[str]]  # text → token strings, no BOS
    unk: int | None
    n_ctx: int
    n_layers: int
    n_heads: int | None = None


def organism_vocab(model_name: str) -> _Vocab | None:
    """The tokenizer and sizes of the organism (or an organism folder) read from its files alone — the
    `tokenizers` library and config.json, in milliseconds, without torch or TransformerLens. None for any other
    model (or a folder the loader will refuse): its checks wait for the model (`_model_vocab`)."""
    from circuits.families import PUBLIC_MODELS
    from circuits.model import DATA_DIR

    if model_name != "organism" and (not model_name.strip() or model_name == "gpt2" or model_name in PUBLIC_MODELS):
        return None  # names `load_model` resolves before looking for a folder
    folder = DATA_DIR / "organism" if model_name == "organism" else Path(model_name)
    try:
        meta = json.loads((folder / "config.json").read_text())
        if meta.get("format") == "circuits-tl/1":  # a family model folder (circuits.families.save_model)
            return None
        n_ctx, n_layers = int(meta["model"]["n_ctx"]), int(meta["model"]["n_layers"])
        n_heads = int(meta["model"]["n_heads"]) if "n_heads" in meta["model"] else None
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(folder / "tokenizer" / "tokenizer.json"))
    except Exception:  # not an organism folder, or a broken one: the model loader names the problem
        return None

    def encode(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False).ids

    return _Vocab(lambda p: 1 + len(encode(p)), encode,  # the replacement model prepends BOS
                  lambda t: tok.encode(t, add_special_tokens=False).tokens, tok.token_to_id("<|unk|>"), n_ctx,
                  n_layers, n_heads)


def _model_vocab(model) -> _Vocab | None:
    """`_Vocab` of a loaded model (for models without `organism_vocab`); None when it has no tokenizer."""
    if getattr(model, "tokenizer", None) is None:
        return None

    def encode(text: str) -> list[int]:
        return model.to_tokens(text, prepend_bos=False)[0].tolist() if text else []

    return _Vocab(lambda p: int(model.to_tokens(p, truncate=False).shape[-1]), encode,
                  lambda t: list(model.to_str_tokens(t, prepend_bos=False)),
                  getattr(model.tokenizer, "unk_token_id", None), int(model.cfg.n_ctx), int(model.cfg.n_layers),
                  int(model.cfg.n_heads))


_FEATURE_KINDS = {"transcoder": "mlp_feature", "attention_sae": "attn_feature"}


def set_shapes(name: str) -> dict[tuple[str, int], int] | None:
    """{(node kind, layer): d_sae} of a dictionary set in our layout (a shipped set or a folder with set.json), read
    from its JSON files before anything loads; None for other layouts (their shapes come from the loaded set)."""
    from circuits.dictionaries import ORGANISM_ALIASES, ORGANISM_SETS, PUBLIC_SETS
    from circuits.dictionaries.set_names import ALIASES, NAMED_SETS
    from circuits.model import DATA_DIR

    name = ORGANISM_ALIASES.get(name, name)
    if name in PUBLIC_SETS or name in NAMED_SETS or name in ALIASES:  # downloaded: known once loaded
        return None
    folder = DATA_DIR / "dictionaries" / name if name in ORGANISM_SETS else Path(name)
    out: dict[tuple[str, int], int] = {}
    try:
        for member in json.loads((folder / "set.json").read_text())["dictionaries"]:
            c = json.loads((folder / member / "cfg.json").read_text())["circuits"]
            if c["kind"] == "cross_layer_transcoder":
                out.update({("mlp_feature", layer): int(c["d_sae"]) for layer in range(int(c["n_layers"]))})
            else:
                out[(_FEATURE_KINDS[c["kind"]], int(c["layer"]))] = int(c["d_sae"])
    except Exception:  # not our layout, or broken: load_dictionaries reads it and names any problem
        return None
    return out


def _loaded_shapes(dset) -> dict[tuple[str, int], int]:
    return {(_FEATURE_KINDS[d.cfg.kind], d.cfg.layer): d.cfg.d_sae for d in dset}


def _check_token(vocab: _Vocab, flag: str, token: str) -> int:
    """The id of a --target/--contrast token, found as `attribution.targets.single_token` will find it (one
    `resolve_token` for both); one line naming the problem otherwise."""
    from circuits.attribution.targets import resolve_token
    from circuits.errors import AttributionError

    try:
        return resolve_token(token, vocab.encode, vocab.pieces, vocab.unk, flag)
    except AttributionError as e:
        raise CircuitsError(str(e)) from None


def _check_inputs(args, prompt: str, target, vocab: _Vocab | None, shapes: dict | None) -> None:
    """Whatever `vocab` (the model's tokenizer and sizes) and `shapes` (the set's widths) can tell about the prompt,
    the target tokens and the --feature, before any attribution: called with what is known before the model loads,
    and again with what the loaded model and set tell when that was not known. `target` is a `TargetSpec`."""
    n_tokens = None
    if vocab is not None:
        from circuits.inputs import whitespace_problem

        problem = whitespace_problem(prompt, vocab.encode, vocab.unk)
        if problem:
            raise CircuitsError(problem)
        n_tokens = vocab.n_tokens(prompt)
        if args.corrupt is not None:
            problem = whitespace_problem(args.corrupt, vocab.encode, vocab.unk, "the --corrupt prompt")
            if problem:
                raise CircuitsError(problem)
            n_corrupt = vocab.n_tokens(args.corrupt)
            if n_corrupt != n_tokens:
                raise CircuitsError(f"--corrupt has {n_corrupt} tokens and the prompt {n_tokens} (BOS included): "
                                    "attribution patching pairs the two positions one by one, so give a corrupted "
                                    "prompt of the same length (e.g. one name swapped for another)")
        if n_tokens > vocab.n_ctx:
            raise CircuitsError(f"the prompt has {n_tokens} tokens (BOS included) but the model's context is "
                                f"{vocab.n_ctx}; shorten the prompt")
        if target.kind == "logit":
            for token in target.tokens:
                _check_token(vocab, "--target", token)
        if target.kind == "contrast":
            token = target.tokens[0]
            a, b = _check_token(vocab, "--target", token), _check_token(vocab, "--contrast", target.baseline)
            if a == b:
                raise CircuitsError(f"--contrast {target.baseline!r} is the same token as --target {token!r}: "
                                    "a contrast explains logit(A) − logit(B) and needs two different tokens")
    if target.kind != "feature":
        return
    node, spec = target.node, args.feature
    check_feature(f"--feature {spec}", node.kind, node.layer, node.index, args.dicts,
                  vocab.n_layers if vocab is not None else None, shapes)
    if n_tokens is not None and node.pos >= n_tokens:
        raise CircuitsError(f"--feature {spec}: position {node.pos} is out of range: the prompt has {n_tokens} "
                            f"tokens, BOS included (positions 0–{n_tokens - 1})")


def check_feature(what_flag: str, kind: str, layer: int, index: int, dicts: str, n_layers: int | None,
                  shapes: dict | None) -> None:
    """A feature's layer is in the model and its index in its dictionary (`shapes`: `set_shapes`, None when the
    set's widths are not known before loading); one line naming the part that is out of range."""
    what = {"mlp_feature": "transcoder", "attn_feature": "attention SAE"}[kind]
    if layer < 0 or (n_layers is not None and layer >= n_layers):
        raise CircuitsError(f"{what_flag}: layer {layer} is out of range"
                            + (f": the model has {n_layers} layers (0–{n_layers - 1})" if n_layers else ""))
    if shapes is not None:
        d_sae = shapes.get((kind, layer))
        if d_sae is None:
            have = sorted(lay for k, lay in shapes if k == kind)
            raise CircuitsError(f"{what_flag}: the dictionary set {dicts} has no {what} at layer {layer}"
                                + (f" (its {what}s: layers {', '.join(map(str, have))})" if have
                                   else f" (it has no {what}s)"))
        if index >= d_sae:
            raise CircuitsError(f"{what_flag}: feature index {index} is out of range: {what} L{layer} has {d_sae} "
                                f"features (0–{d_sae - 1})")
