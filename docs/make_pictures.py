"""Regenerate the README's circuit picture, docs/images/ioi.png (run from the repository root):

    python docs/make_pictures.py

It traces the README's IOI prompt on the organism with the committed dictionaries exactly as
``circuits trace "When Mary and John went to the store, John gave a drink to" --target Mary --contrast John
--png docs/images/ioi.png`` does (BOS folded, default pruning, automatic supernodes, dashboard labels) and draws
the supernode picture (`circuits.picture`), at most 1600 px wide. Needs Graphviz (``neato``).

    python docs/make_pictures.py --stats

prints the numbers docs/readable-circuits.md quotes about the same graph instead: BOS folding, supernodes at
several thresholds, how far influence moves in the supernode graph, and node-level paths against routes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "When Mary and John went to the store, John gave a drink to"


def main() -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from circuits.cli import main as cli

    out = ROOT / "docs" / "images" / "ioi.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()) as printed:  # the trace's report; shown only on failure
        code = cli(["trace", PROMPT, "--target", "Mary", "--contrast", "John", "--png", str(out),
                    "--dot", str(out.with_suffix(".dot")), "--quiet"])
    if code != 0:
        print(printed.getvalue())
    if code == 0:
        from PIL import Image

        from circuits.picture import box_count

        dot = out.with_suffix(".dot")
        boxes = box_count(dot.read_text())
        dot.unlink()  # written only to count the boxes; the PNG is what the README shows
        with Image.open(out) as im:
            print(f"wrote {out.relative_to(ROOT)}: {im.width} × {im.height} px, {boxes} boxes")
    return code


def stats() -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import time

    import torch

    from circuits import load_dictionaries, load_model
    from circuits.attribution import Contrast, attribute
    from circuits.graph import FEATURE_KINDS, fold_bos
    from circuits.paths import top_paths, top_routes
    from circuits.pruning import influence, prune
    from circuits.replacement import ReplacementModel
    from circuits.supernodes import SupernodeConfig, auto_supernodes, contract

    model, _ = load_model("organism")
    rm = ReplacementModel(model, load_dictionaries("organism", model))
    full = attribute(rm, PROMPT, Contrast(" Mary", " John"))
    folded = fold_bos(full)
    for name, g in (("--show-bos", full), ("folded", folded)):
        p = prune(g).graph
        at_bos = sum(1 for n in p.nodes if n.pos == 0 and n.kind != "token")
        print(f"{name}: {g.n_nodes} nodes, {g.n_edges} edges; pruned {p.n_nodes} nodes, {at_bos} at BOS")
    p = prune(folded).graph
    n_features = sum(1 for n in p.nodes if n.kind in FEATURE_KINDS)
    for label, categorize in (("label categories", None), ("kinds only", lambda n: None)):
        for threshold in (0.6, 0.5, 0.4, 0.3):
            t = time.perf_counter()
            found = auto_supernodes(p, SupernodeConfig(threshold=threshold), categorize)
            took = time.perf_counter() - t
            members = sum(len(s["nodes"]) for s in found)
            print(f"supernodes ({label}, Jaccard >= {threshold}): {len(found)} groups, {members} of {n_features} "
                  f"features grouped ({took:.2f} s)")
    found = auto_supernodes(p)
    c = contract(p, found)
    member_inf = torch.zeros(c.graph.n_nodes, dtype=torch.float64).index_add_(0, c.group_of, influence(p))
    inf = influence(c.graph)
    tokens = [i for i, n in enumerate(c.graph.nodes) if n.kind == "token"]
    print(f"default supernode graph: {c.graph.n_nodes} nodes; tokens' influence {float(member_inf[tokens].sum()):.3f} "
          f"(members) vs {float(inf[tokens].sum()):.3f} (supernode graph); largest change of one node "
          f"{float((member_inf - inf).abs().max()):.3f} (largest influence {float(member_inf.max()):.3f})")
    t = time.perf_counter()
    best = top_paths(p, 1)[0]
    print(f"best single-node path: {best.weight:.4f} ({time.perf_counter() - t:.2f} s)")
    t = time.perf_counter()
    routes = top_routes(p, 5)
    print(f"best routes ({time.perf_counter() - t:.2f} s): " + ", ".join(f"{r.weight:.4f}" for r in routes))
    return 0


if __name__ == "__main__":
    import argparse

    # argparse: a mistyped option (--stat, --help) is an error or help, never a silent rewrite of the picture
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--stats", action="store_true", help="print the numbers docs/readable-circuits.md quotes "
                        "instead of drawing docs/images/ioi.png")
    sys.exit(stats() if parser.parse_args().stats else main())
