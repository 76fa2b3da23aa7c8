"""Text the explorer shows: the page header, Markdown escaping, a dashboard context as HTML."""

from __future__ import annotations

import html


def header_text(graph, g) -> str:
    """The page header: the graph's prompt (its own text: joining token strings loses the space before an unknown
    word), or for an aggregated circuit its roles; the targets; node and edge counts."""
    meta = graph.metadata
    if meta.get("aggregated"):
        title = "roles: " + " · ".join(str(t) for t in meta.get("token_strings", []))
    elif isinstance(meta.get("prompt"), str):
        title = meta["prompt"]
    else:
        toks = meta.get("token_strings", [])
        title = "".join(toks[1:] if meta.get("bos_pos") == 0 else toks)
    targets = []
    for t in meta.get("targets", []):
        label = str(t["label"])
        text = label if "'" in label or '"' in label else repr(label)  # a contrast label quotes its tokens itself
        if not meta.get("aggregated") and t.get("value") is not None:  # an aggregated target has no single value
            what = {"logit_diff": "logit difference", "logit": "logit"}.get((t.get("node") or ["logit"])[0])
            notes = [w for w in (what, f"p={t['probability']:.2f}" if t.get("probability") is not None else None) if w]
            text += f" = {t['value']:.2f}" + (f" ({', '.join(notes)})" if notes else "")
        targets.append(text)
    return (f"**{_md_escape(title.strip())}** → {_md_escape(', '.join(targets))}  \n"
            f"{graph.n_nodes:,} nodes / {graph.n_edges:,} edges, pruned to {g.n_nodes:,} / {g.n_edges:,}")


def _md_escape(text: str) -> str:
    """Text shown literally inside Markdown (a prompt may hold `*`, `_`, `<`, ...)."""
    out = text.replace("\\", "\\\\")
    for ch in "`*_[]<>#|~$":
        out = out.replace(ch, "\\" + ch)
    return out


def context_html(tokens: list[str], focus: int, activation: float) -> str:
    """One dashboard context as HTML: the activating token highlighted, every token shown literally."""
    parts = []
    for i, t in enumerate(tokens):
        text = html.escape(t)
        parts.append(f"<mark style='background:#fde68a;font-weight:600'>{text}</mark>" if i == focus else text)
    return (f"<div style='white-space:pre-wrap;font-size:0.9em;margin:0.1em 0'><code>{activation:.2f}</code> "
            f"{''.join(parts)}</div>")
