"""`circuits attention`: why a head attended where it did, its attention score (or first-order pattern change)
as a sum over (query-side source, key-side source) pairs in the frozen replacement model (QK attribution,
`circuits.attribution.qk`)."""

from __future__ import annotations

from pathlib import Path

from circuits.cli.common import _prompt, _write_json
from circuits.cli.runtime import add_device_option, resolve_device
from circuits.errors import CircuitsError


def _node_name(node, pos: int) -> str:
    """A QK table entry: the node's id, or ``const@POS`` for a position's constant part."""
    from circuits import export

    return export.node_id(node) if node is not None else f"const@{pos}"


def _parse_head(spec: str) -> tuple[int, int]:
    """--head L.H → (layer, head)."""
    parts = spec.split(".")
    if len(parts) != 2 or not all(x.isdigit() for x in parts):
        raise CircuitsError(f"--head {spec!r}: write LAYER.HEAD, e.g. 3.0 (layer 3, head 0)")
    return int(parts[0]), int(parts[1])


def _check_attention_options(args) -> tuple[int, int]:
    from circuits.inputs import check_output_file

    layer, head = _parse_head(args.head)
    for flag, v in (("--key", args.key), ("--query", args.query), ("--versus", args.versus)):
        if v is not None and v < 0:
            raise CircuitsError(f"{flag} {v}: positions count from 0 (the BOS token)")
    if args.versus is not None and args.versus == args.key:
        raise CircuitsError(f"--versus {args.versus}: must differ from --key (the contrast is key minus versus)")
    if args.query is not None:
        for flag, v in (("--key", args.key), ("--versus", args.versus)):
            if v is not None and v > args.query:
                raise CircuitsError(f"{flag} {v}: a query at {args.query} attends to positions 0-{args.query} "
                                    "(causal attention)")
    if args.top < 1:
        raise CircuitsError(f"--top {args.top}: must be at least 1")
    if args.json:
        check_output_file(args.json, "--json", kind="json")
    return layer, head


def _check_against_model(args, prompt: str, layer: int, head: int) -> None:
    """The head and positions against the organism's sizes and tokenizer, read from its files before it loads."""
    from circuits.cli.trace_checks import organism_vocab
    from circuits.inputs import whitespace_problem

    vocab = organism_vocab(args.model)
    if vocab is None:  # other models: checked when they load
        return
    problem = whitespace_problem(prompt, vocab.encode, vocab.unk)
    if problem:
        raise CircuitsError(problem)
    if not 0 <= layer < vocab.n_layers:
        raise CircuitsError(f"--head {args.head}: layer {layer} is out of range: the model has {vocab.n_layers} "
                            f"layers (0–{vocab.n_layers - 1})")
    if vocab.n_heads is not None and not 0 <= head < vocab.n_heads:
        raise CircuitsError(f"--head {args.head}: head {head} is out of range: layer {layer} has {vocab.n_heads} "
                            f"heads (0–{vocab.n_heads - 1})")
    n = vocab.n_tokens(prompt)
    for flag, v in (("--key", args.key), ("--query", args.query), ("--versus", args.versus)):
        if v is not None and v >= n:
            raise CircuitsError(f"{flag} {v}: the prompt has {n} tokens, BOS included (positions 0–{n - 1})")


def cmd_attention(args) -> int:
    prompt = _prompt(args)
    layer, head = _check_attention_options(args)  # before the model loads
    _check_against_model(args, prompt, layer, head)
    from circuits.cli.trace_checks import check_model_name

    check_model_name(args.model)  # the last check before the model loads
    from circuits.attribution.qk import explain_attention
    from circuits.attribution.targets import token_string
    from circuits.dictionaries import load_dictionaries
    from circuits.model import load_model
    from circuits.replacement import ReplacementModel

    model, _ = load_model(args.model, resolve_device(args.device))
    rm = ReplacementModel(model, load_dictionaries(args.dicts, model), name=args.model)
    cache = rm.run(prompt)
    tokens = [token_string(model, t) for t in cache.tokens.tolist()]
    query = args.query if args.query is not None else cache.n_pos - 1
    keys = args.key if args.versus is None else (args.key, args.versus)
    qk = explain_attention(rm, cache, layer, head, query, keys, quantity="pattern" if args.pattern else "score")
    out = {"format": "circuits-attention", "model": args.model, "dictionaries": args.dicts, "prompt": prompt,
           "token_strings": tokens,
           **qk.to_json(args.top)}
    if args.json:
        _write_json(Path(args.json), out)
    print("tokens: " + " ".join(f"{i}:{t!r}" for i, t in enumerate(tokens)))
    where = " − ".join(f"{query} {tokens[query]!r} → {q} {tokens[q]!r}" for q in qk.keys)
    pattern = " − ".join(f"{float(qk.pattern[q]):.4f}" for q in qk.keys)
    what = "linearised pattern change Σ_j ∂A/∂s_j · s_j" if args.pattern else "pre-softmax score"
    print(f"L{layer}.H{head} {where}: {what} {qk.value:.4f} (Σ of all terms {qk.total():.4f}); pattern {pattern}")
    print(f"top {args.top} pairs (query side × key side: contribution):")
    for t in qk.top(args.top):
        print(f"  {_node_name(t.query, query):<14} × {_node_name(t.key, t.key_pos):<14} {tokens[t.key_pos]!r:<12} "
              f"{t.contribution:+.4f}")
    print(f"top {args.top} pairs of two sources (constant parts left out):")
    for t in qk.top(args.top, constants=False):
        print(f"  {_node_name(t.query, query):<14} × {_node_name(t.key, t.key_pos):<14} {tokens[t.key_pos]!r:<12} "
              f"{t.contribution:+.4f}")
    key_title = "key side (summed over the query side)" + (
        f"; a source at --versus {args.versus} enters with a minus sign (its score is subtracted), so + favours "
        f"--key {args.key}" if args.versus is not None else "")
    for title, rows in (("query side (summed over the key side)", qk.query_marginals()),
                        (key_title, qk.key_marginals())):
        print(f"{title}:")
        for m in rows[: args.top]:
            print(f"  {_node_name(m.node, m.pos):<14} {tokens[m.pos]!r:<12} {m.contribution:+.4f}")
    if args.json:
        print(f"wrote {args.json}")
    return 0


def add_parser(sub) -> None:
    """`attention`."""
    at = sub.add_parser("attention", help="why a head attended where it did: its attention score as a sum over "
                        "(query-side source, key-side source) pairs in the frozen replacement model")
    at.add_argument("prompt", nargs="?", help="the prompt (or --prompt-file)")
    at.add_argument("--prompt-file", metavar="FILE", help="read the prompt from a UTF-8 text file")
    at.add_argument("--model", default="organism")
    at.add_argument("--dicts", default="organism", help="organism, a public set name, or a folder")
    at.add_argument("--head", required=True, metavar="L.H", help="layer and head, e.g. 3.0")
    at.add_argument("--query", type=int, default=None, metavar="P", help="query position (default: the last)")
    at.add_argument("--key", type=int, required=True, metavar="Q", help="key position")
    at.add_argument("--versus", type=int, default=None, metavar="Q2",
                    help="explain the preference score(P→Q) − score(P→Q2) (IOI: END→IO minus END→S2)")
    at.add_argument("--pattern", action="store_true", help="explain the first-order change of the attention "
                    "pattern (softmax Jacobian × terms) instead of the pre-softmax score")
    at.add_argument("--top", type=int, default=10, help="pairs and per-side sources to list")
    at.add_argument("--json", metavar="FILE", help="write the table as JSON")
    add_device_option(at)
    at.set_defaults(func=cmd_attention)
