"""Regenerate the README's circuit picture, docs/images/ioi.png (run from the repository root):

    python docs/make_pictures.py

It traces the README's IOI prompt on the organism with the committed dictionaries exactly as
``circuits trace "When Mary and John went to the store, John gave a drink to" --target Mary --contrast John
--png docs/images/ioi.png`` does (BOS folded, default pruning, automatic supernodes, dashboard labels) and draws
the supernode picture (`circuits.picture`), at most 1600 px wide. Needs Graphviz (``neato``).
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


if __name__ == "__main__":
    sys.exit(main())
