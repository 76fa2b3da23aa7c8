"""The explorer's views (Streamlit), one module per part of the page; `app.py` at the repository root wires them
(`streamlit run app.py`). UI only: every number comes from the `circuits` library.

    state          options, cached model/dictionaries, the shared-model lock, errors as messages, session state
    sidebar        prompt, target, model and pruning settings; the graph view's reports
    graph_tab      the graph view (browser) or the server's drawing; the pinned subgraph and supernodes
    inspector      the selected node: dashboard, edges, activations, per-head parts
    qk_panel       "why this attention": QK decomposition of a head's attention
    checks         scores, faithfulness; the single-prompt guard
    interventions  zero / scale / clamp features
    lens           logit lens
    files          downloads, uploads, example gallery
    studies_page   the case-study reports
    markup         header text, Markdown escaping, dashboard contexts as HTML
"""
