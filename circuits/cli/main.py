"""The `circuits` command. Subcommands per capability; every user error is one line on stderr and exit status 2.

    circuits organism train   [--out DIR] [--steps N] [--seed S] [--no-resume] [--export]
    circuits organism eval    [--model organism|DIR] [--out FILE] [--subsample F]
    circuits organism corpus  [--rows N] [--seed S] [--stream train|heldout]
    circuits dicts train      [--model organism] [--out DIR] [--tokens N] [--d-sae N] [--k K] [--export]
    circuits dicts finetune   [--dicts organism-base|NAME|DIR] --out DIR [--steps N] [--lr X] [--temperature T]
    circuits dicts fit-skip   [--dicts organism|NAME|DIR] --out DIR [--sites transcoder_L3] [--ioi-weight W]
    circuits dicts eval       [--model organism] [--dicts organism|NAME|DIR] [--out FILE]
    circuits dicts calibrate  [--dicts organism|NAME|DIR] --l0 L --out DIR [--rows N] [--float16]
    circuits dicts convert    SRC --out DIR [--n-heads N]
    circuits trace            PROMPT [--target T.. [--contrast B] | --feature K:L:P:I] [--json F --dot F ...]
    circuits attention        PROMPT --head L.H --key Q [--query P] [--versus Q2] [--pattern] [--top N] [--json F]
    circuits graph show FILE  |  circuits graph diff A B
    circuits dashboards build [--model organism] [--rows N]  |  circuits feature ID [--text PROMPT] [--label L]

Options are spelt in full (`Parser`: no argparse prefix abbreviations, on every subcommand).
``--debug`` (before the subcommand) shows the traceback of an error; ``--threads N`` sets torch's threads (the rule
is in `circuits.cli.runtime`); commands that load a model take ``--device``.

Layout: this module assembles the parser (global options, one `add_parser(sub)` per command module) and dispatches;
each command group lives in its own module (`organism`, `dicts`, `trace`, `graph`, `dashboards`, `study`), shared
helpers in `common`. Note that `circuits.cli.main` (the attribute of the package) is the function `main`, not this
module: import the module as `sys.modules["circuits.cli.main"]` if ever needed.
"""

from __future__ import annotations

import argparse
import os
import sys

from circuits import __version__
from circuits.cli import attention, dashboards, dicts, graph, organism, study, trace
from circuits.cli.common import report_error, warn
from circuits.cli.runtime import check_device, configure_threads
from circuits.errors import CircuitsError


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default where it has one and the text does not already say it (argparse's
    `ArgumentDefaultsHelpFormatter` also adds "(default: None)" and "(default: False)", which say nothing)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS or action.default == [] or "default" in text.lower()
                or not text):
            return text
        return text + " (default %(default)s)"


class Parser(argparse.ArgumentParser):
    """The parser of `circuits` and of every subcommand: no abbreviated options. argparse's default accepts any
    unambiguous prefix (``trace --prompt X`` was read as ``--prompt-file X``); here an option is spelt in full or
    is an error. Subparsers are made with the class of their parent (`add_subparsers`' default ``parser_class``),
    so every ``add_parser`` of every command module gets ``allow_abbrev=False`` without passing it."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        """One line, like every other error (argparse prints the whole usage block first): the command, what was
        wrong, a suggestion where one is close, and where the options are listed. Exit status 2."""
        import difflib
        import re

        bad = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if bad:  # a mistyped command or choice: the closest one
            choices = re.findall(r"'?([\w.-]+)'?", bad.group(2))
            close = difflib.get_close_matches(bad.group(1), choices, n=1, cutoff=0.6)
            message = (f"{bad.group(1)!r} is not one of {', '.join(choices)}"
                       + (f"; did you mean {close[0]}?" if close else ""))
        missing = re.fullmatch(r"the following arguments are required: \{([\w,-]+)\}", message)
        if missing:  # a command or action left out (`circuits graph`)
            message = f"{'an action' if self.prog != 'circuits' else 'a command'} is missing: one of " + \
                ", ".join(missing.group(1).split(","))
        where = self.prog.removeprefix("circuits").strip()
        self.exit(2, f"circuits: error: {where + ': ' if where else ''}{message} (`{self.prog} --help` lists the "
                     "options)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="circuits", description="Feature-level circuits in transformers.")
    p.add_argument("--version", action="version", version=f"circuits {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--threads", metavar="N", default=None,
                   help="torch threads (default: $CIRCUITS_THREADS, else $OMP_NUM_THREADS, else 1; docs/cli.md)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    for group in (organism, dicts, trace, attention, graph, dashboards, study):  # the order of `circuits --help`
        group.add_parser(sub)
    # the usage line names each command once (argparse would list aliases such as `attribute` as commands too;
    # the help row 'trace (attribute)' still shows it)
    sub.metavar = "{" + ",".join(a.dest for a in sub._choices_actions) + "}"
    for parser in _parsers(p):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) and action.metavar is None:
                action.metavar = "{" + ",".join(action.choices) + "}"  # `circuits graph` alone names its actions
            elif action.option_strings and not action.help and action.dest in SHARED_HELP:
                action.help = SHARED_HELP[action.dest]
    return p


def _parsers(parser: argparse.ArgumentParser):
    """`parser` and every (sub)command parser under it, each once (an alias shares its command's parser)."""
    seen, todo = set(), [parser]
    while todo:
        p = todo.pop()
        if id(p) in seen:
            continue
        seen.add(id(p))
        yield p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())


#: What the options that many commands share say in their help, where a command gives no text of its own.
SHARED_HELP = {
    "model": "organism, gpt2, a public model's name or a model folder",
    "dicts": "a dictionary set's name (organism, organism-base, ...) or a set folder",
    "seed": "random seed",
    "quiet": "no progress bars or progress lines",
    "no_resume": "start again, ignoring an existing checkpoint",
}



def _suggestion(parser: argparse.ArgumentParser, extra: list[str], top: bool) -> str:
    """'; did you mean --target?' for a mistyped option (the closest option of that parser), or where a global
    option goes (`--threads` after the subcommand)."""
    import difflib

    first = next((x.split("=", 1)[0] for x in extra if x.startswith("--")), None)
    if first is None:
        return ""
    if not top and first in ("--threads", "--debug"):
        return f"; {first} goes before the subcommand: circuits {first}{' N' if first == '--threads' else ''} COMMAND ..."
    options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    close = difflib.get_close_matches(first, options, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _chosen(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The (sub)command parser that `args` went through (``circuits dicts eval`` → the ``eval`` parser), so that
    its errors print its own usage, not the top level's."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None) in action.choices:
            return _chosen(action.choices[getattr(args, action.dest)], args)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the parser they were given to: before the subcommand, the top level's
        given = list(sys.argv[1:] if argv is None else argv)
        first = given.index(extra[0]) if extra[0] in given else len(given)
        top = args.command in given and first < given.index(args.command)
        chosen = parser if top else _chosen(parser, args)
        chosen.error(f"unrecognized arguments: {' '.join(extra)}" + _suggestion(chosen, extra, top))
    if getattr(args, "subsample", 1.0) <= 0 or getattr(args, "subsample", 1.0) > 1:
        _chosen(parser, args).error("--subsample must be in (0, 1]")
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        warn(str(message))

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            for noise in (DeprecationWarning, FutureWarning, PendingDeprecationWarning, ResourceWarning):
                warnings.simplefilter("ignore", noise)  # libraries' notes to developers, not to the user
            warnings.showwarning = show
            configure_threads(args.threads)  # before any work: a bad count is the only output
            if getattr(args, "device", None) is not None:
                check_device(args.device)  # a device that is not here: before the model loads
            return args.func(args)
    except CircuitsError as e:
        if args.debug:
            raise
        return report_error(str(e))
    except KeyboardInterrupt:
        print("circuits: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `circuits ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
