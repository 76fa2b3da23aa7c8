"""Regenerate the README text that quotes a feature, from the shipped organism, dictionaries and dashboards.

The README's feature example must describe what the committed data say, not what an earlier set of dictionaries
said. Each generated region of README.md sits between two markers::

    <!-- generated: NAME (python docs/readme_examples.py) -->
    ...
    <!-- end generated: NAME -->

``python docs/readme_examples.py`` prints every region; ``--write`` rewrites them in README.md in place;
``--check`` exits 1 when README.md differs from what the current data produce (``tests/test_readme.py`` runs the
same comparison).

The quoted feature is chosen by a rule, not by hand, so that it stays meaningful after the dictionaries are
retrained: the layer-3 transcoder feature with the largest effect on logit(" Mary") − logit(" John") in the
example prompt of the README's tour (layer 3 is the last layer, so that effect is its direct effect on the logits).
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PROMPT = "When Mary and John went to the store, John gave a drink to"
ANSWER, WRONG = " Mary", " John"
MARKER = re.compile(r"(<!-- generated: (?P<name>[\w-]+) \(python docs/readme_examples\.py\) -->\n)(?P<body>.*?)"
                    r"(<!-- end generated: (?P=name) -->)", re.S)


def pick_feature(rm) -> tuple[int, float, float, float]:
    """(index, effect, activation, logit difference): the transcoder L3 feature at the last position with the
    largest effect on the contrast."""
    from circuits.attribution import Contrast, attribute
    from circuits.pruning import total_effects

    graph = attribute(rm, PROMPT, Contrast(ANSWER, WRONG))
    effects = total_effects(graph)
    last = max(n.pos for n in graph.nodes)
    effect, index, row = max((float(effects[i]), n.index, i) for i, n in enumerate(graph.nodes)
                             if n.kind == "mlp_feature" and n.layer == 3 and n.pos == last)
    logit_diff = float(graph.activations[[i for i, n in enumerate(graph.nodes) if n.kind == "logit_diff"][0]])
    return index, effect, float(graph.activations[row]), logit_diff


KEEP = "\x00"  # a space that line wrapping must not break at (inside a quoted token or a code span)


def _tokens(pairs, n: int = 4) -> str:
    return ", ".join(f'"{t}"'.replace(" ", KEEP) for t, _ in pairs[:n])


def regions() -> dict[str, str]:
    from circuits import load_dictionaries, load_model
    from circuits.dashboards import Dashboards
    from circuits.model import DATA_DIR
    from circuits.replacement import ReplacementModel

    model, _ = load_model("organism")
    rm = ReplacementModel(model, load_dictionaries("organism", model), name="organism")
    index, effect, activation, logit_diff = pick_feature(rm)
    db = Dashboards(DATA_DIR / "dashboards" / "organism.sqlite", rm)
    try:
        dash = db.get("transcoder_L3", index)
    finally:
        db.close()
    fid = f"M3#{index}"
    commands = (
        "```bash\n"
        "circuits dashboards build --model organism          # only to rebuild it (it ships): every feature → "
        "data/dashboards/organism.sqlite\n"
        f"circuits feature {fid}                              # the dashboard in the terminal "
        f"(also: mlp:3:{index}, transcoder_L3#{index})\n"
        f'circuits feature {fid} --text "{PROMPT}"   # custom text\n'
        f"circuits feature {fid} --label \"my name for it\"     # a label of your own ('' clears it)\n"
        "```\n")
    peaks = [e.tokens[e.focus] for e in dash.top_examples()]
    common = max(sorted(set(peaks)), key=peaks.count) if peaks else None
    fires = (f'peaks on "{common}" in {peaks.count(common)} of its {len(peaks)} top contexts'
             if common is not None else "is dead on the held-out text")
    peak = f"`{dash.auto_label}`".replace(" ", KEEP)
    enriched = getattr(dash, "enrichment_label", None)  # token-set enrichment (docs/labels.md), when the database has it
    labels = (f"Its label from token-set enrichment is {f'`{enriched}`'.replace(' ', KEEP)} (peak-token label {peak})"
              if enriched else f"Its automatic label is {peak}")
    example = (
        f"Example: `circuits feature {fid}` shows the layer-3 transcoder feature with the largest effect on "
        f'logit("{ANSWER.strip()}") − logit("{WRONG.strip()}") at the last position of the example prompt '
        f"(activation {activation:.2f} on the final \"to\"; effect {effect:+.2f} of the logit difference "
        f"{logit_diff:.2f}). {labels}: on held-out text it "
        f"{fires} (density {dash.density:.2%}, maximum activation {dash.max_activation:.2f}), promotes "
        f"{_tokens(dash.logits_top)} and suppresses {_tokens(dash.logits_bottom)}.")
    example = textwrap.fill(example, width=118, break_long_words=False, break_on_hyphens=False).replace(KEEP, " ")
    example += "\n"
    return {"feature-commands": commands, "feature-example": example}


def render(text: str, new: dict[str, str]) -> str:
    """`text` with every generated region's body replaced by `new[name]`."""
    missing = set(new) - {m.group("name") for m in MARKER.finditer(text)}
    if missing:
        raise SystemExit(f"README.md has no generated region {', '.join(sorted(missing))}")
    return MARKER.sub(lambda m: m.group(1) + new[m.group("name")] + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="rewrite the generated regions of README.md")
    p.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date")
    args = p.parse_args(argv)
    new = regions()
    if not (args.write or args.check):
        for name, body in new.items():
            print(f"--- {name}\n{body}")
        return 0
    text = README.read_text(encoding="utf-8")
    updated = render(text, new)
    if args.write:
        if updated != text:
            README.write_text(updated, encoding="utf-8")
        print("README.md " + ("updated" if updated != text else "already up to date"))
    elif args.check:
        print("README.md is " + ("up to date" if updated == text else "OUT OF DATE: python docs/readme_examples.py "
                                 "--write"))
        return int(updated != text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
