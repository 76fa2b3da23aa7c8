"""The 'case studies' page: lists the study reports, shows one, opens its aggregated circuit."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from circuits.explorer.files import load_graph_bytes
from circuits.explorer.state import STUDY_DIRS


def study_reports() -> dict[str, Path]:
    out = {}
    for base in STUDY_DIRS:
        if base.is_dir():
            for report in sorted(base.glob("*/report.md")):
                where = "shipped" if base == STUDY_DIRS[0] else f"your {base}/"  # not an absolute path
                out[f"{report.parent.name} ({where})"] = report.parent
    return out


def studies_page() -> None:
    """Lists case-study reports; shows one (Markdown, plots, tables) and opens its aggregated circuit."""
    import re

    st.header("Case studies")
    reports = study_reports()
    if not reports:
        st.info("No reports yet. Run e.g. `circuits study ioi --n 200` (writes reports/ioi).")
        return
    pick = st.selectbox("report", list(reports), key="study_pick")
    folder = reports[pick]
    text = (folder / "report.md").read_text()
    c = st.columns(2)
    if c[0].button("open the aggregated circuit in the explorer", key="study_open"):
        st.session_state["goto_explorer"] = True  # the page radio is switched before it is drawn next run
        load_graph_bytes((folder / "circuit.json").read_bytes(), f"{folder.name}/circuit.json")
        st.session_state.pop("goto_explorer", None)  # not opened (the message says why): stay here
    if (folder / "results.json").exists():
        c[1].download_button("results.json", (folder / "results.json").read_bytes(), f"{folder.name}_results.json",
                             "application/json", key="study_dl")
    for chunk in re.split(r"(!\[[^\]]*\]\([^)]+\))", text):  # local images go through st.image
        m = re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", chunk)
        if m:
            path = folder / m.group(2)
            if path.exists():
                st.image(str(path), caption=m.group(1))
        elif chunk.strip():
            st.markdown(chunk)
