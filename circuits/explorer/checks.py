"""The 'checks' tab: replacement and completeness scores, faithfulness; and the guard of every
single-prompt tool (an aggregated case-study graph or a graph without its prompt cannot run the model)."""

from __future__ import annotations

import streamlit as st

from circuits.explorer.state import MODELS, on_model, run_model


def single_prompt(graph, run: dict) -> bool:
    """Whether the single-prompt tools (faithfulness, interventions, logit lens) apply; if not, say why."""
    if aggregated_notice(graph):
        return False
    if run["prompt"] is None:
        st.info("This graph does not record the prompt it was traced on, so the model cannot be run on it.")
        return False
    if run["model"] not in MODELS:
        st.info(f"This graph was traced on the model {run['model']!r}; the explorer runs {' and '.join(MODELS)}.")
        return False
    return True


def aggregated_notice(graph) -> bool:
    """Case-study graphs aggregate many prompts by role: single-prompt tools do not apply to them."""
    if not graph.metadata.get("aggregated"):
        return False
    st.info(f"This graph aggregates {graph.metadata.get('n_prompts', 'many')} prompts of the "
            f"{graph.metadata.get('study', '')} study by role (positions are roles): faithfulness, interventions and "
            "the logit lens need a single prompt; the study's report has its measurements (page 'case studies').")
    return True


def checks(full, g, run: dict) -> None:
    from circuits.interventions import faithfulness_with_baselines, graph_metric
    from circuits.pruning import graph_scores

    key = (id(full), g.n_nodes, g.n_edges)
    if st.session_state.get("scores_key") != key:  # scoring the full graph takes a moment: once per graph
        st.session_state["scores"] = (graph_scores(full), graph_scores(g))
        st.session_state["scores_key"] = key
    fs, ps = st.session_state["scores"]
    c = st.columns(4)
    c[0].metric("replacement (full)", f"{fs.replacement:.3f}")
    c[1].metric("completeness (full)", f"{fs.completeness:.3f}")
    c[2].metric("replacement (pruned)", f"{ps.replacement:.3f}")
    c[3].metric("completeness (pruned)", f"{ps.completeness:.3f}")
    if not single_prompt(full, run):
        return
    rm = run_model(run)
    if rm is None:
        return
    n = len(full.metadata["token_strings"])
    shortest = min((d.context_size for d in rm.dictionaries), default=n)
    if n > shortest:
        st.warning(f"the prompt has {n} tokens but a dictionary was trained on {shortest}-token contexts")
    if full.metadata.get("bos_pos") == 0:
        st.caption("position 0 is BOS (attention sinks make it large; its nodes are token/error nodes at pos 0)")
    found = graph_metric(full)
    if found is None:
        return
    metric, metric_name = found
    key = (id(full), g.n_nodes, g.n_edges)  # the results stay shown for this graph and pruning across reruns
    if st.button("compute faithfulness (with random baselines)", key="faith"):
        rows = on_model(faithfulness_with_baselines, rm, run["prompt"], g, metric)
        st.session_state["faith_result"] = {"key": key, "rows": rows} if rows else None
    done = st.session_state.get("faith_result")
    if not done or done["key"] != key:
        return
    st.caption(f"{metric_name} on the graph's prompt: {run['prompt']!r} (in-sample: the graph was pruned on it; "
               "across prompts, with intervals, see the case studies)")
    import pandas as pd

    rows = done["rows"]
    st.markdown(f"**faithfulness** of the pruned graph: standard mean ablation **{rows[0][0].score:.3f}** against "
                f"{rows[0][1].mean:.3f} for {len(rows[0][1].scores)} random circuits of the same shape")
    st.dataframe(pd.DataFrame([{"convention": f.label, "score": round(f.score, 4),
                                "random (mean)": round(base.mean, 4),
                                "random (min–max)": f"{min(base.scores):.3f}–{max(base.scores):.3f}",
                                "errors alone": round(base.errors_only, 4),
                                "circuit": round(f.circuit, 4), "empty": round(f.empty, 4), "model": round(f.full, 4)}
                               for f, base in rows]), hide_index=True, width="stretch", key="faith_table")
    f, base = rows[0]
    st.caption(f"kept: {f.n_features} features and {f.n_errors} error nodes"
               + (f" (the pruned graph's, and the {f.n_bos} at BOS folded into its constants)" if f.n_bos else "")
               + (f"; each random circuit drew {base.n_elsewhere} of its {base.n_features} features at other "
                  "positions, too few being left at the circuit's" if base.n_elsewhere else ""))
    st.caption("Standard mean ablation (the field's convention) sets every feature outside the circuit, inactive "
               "ones included, and every error node outside it to its mean over held-out text; the held-inactive "
               "variant leaves features inactive on the prompt at 0 (not comparable with the literature); zero "
               "ablation sets them to 0. 'errors alone' keeps the circuit's error nodes and no feature. A random "
               "circuit keeps the same error nodes and as many other active "
               "features per dictionary and position (from other positions of the dictionary where too few are "
               "left: that makes it weaker).")
