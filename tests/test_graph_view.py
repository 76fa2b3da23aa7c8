"""The explorer's in-browser re-pruning (circuits/graph_view/frontend/prune.js, run in headless Chromium) keeps
exactly the nodes and edges that `circuits.pruning.prune` keeps, for any thresholds and feature cap — on a tiny
random float64 model and on the organism's example graph (float32, ~1M edges)."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest
import torch

from circuits.graph_view import FRONTEND, component_dir, pack, publish
from circuits.pruning import prune

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROMPT = "When Mary and John went to the store, John gave a drink to"
#: (node threshold, edge threshold, feature cap): defaults, extremes, caps that bind, the slider's ends.
SETTINGS = [(0.8, 0.98, None), (0.5, 0.9, None), (1.0, 1.0, None), (0.8, 0.98, 10), (0.3, 0.5, 3),
            (0.95, 0.99, None), (0.05, 0.05, None), (0.62, 0.83, 0), (0.79, 0.98, None), (0.9, 0.97, 50)]


def _browser_prune(graph, settings):
    """[(node mask, kept edge indices)] from prune.js for each setting."""
    sync_api = pytest.importorskip("playwright.sync_api")
    packed = pack(graph, [""] * graph.n_nodes, {})
    data, index = packed.blob()
    args = {"meta": packed.meta, **{k: {"b64": base64.b64encode(data[o:o + n]).decode()} for k, (o, n) in index.items()}}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.add_script_tag(content=(FRONTEND / "prune.js").read_text())
        out = page.evaluate("""([args, settings]) => {
            for (const [k, v] of Object.entries(args)) {
                if (v && v.b64 !== undefined) {
                    const s = atob(v.b64), u = new Uint8Array(s.length);
                    for (let i = 0; i < s.length; i++) u[i] = s.charCodeAt(i);
                    args[k] = u;
                }
            }
            const G = graphFromArgs(args);
            return settings.map(([t, e, cap]) => {
                const r = pruneGraph(G, t, e, cap);
                const nodes = [];
                r.nodeMask.forEach((v, i) => { if (v) nodes.push(i); });
                return [nodes, Array.from(r.edges)];
            });
        }""", [args, [list(s) for s in settings]])
        browser.close()
    return out


def _check_same(graph, settings=SETTINGS):
    got = _browser_prune(graph, settings)
    for (t, e, cap), (nodes, edges) in zip(settings, got, strict=True):
        r = prune(graph, t, e, cap)
        assert nodes == torch.nonzero(r.node_mask).flatten().tolist(), (t, e, cap)
        assert edges == torch.nonzero(r.edge_mask).flatten().tolist(), (t, e, cap)
        assert len(nodes) == r.graph.n_nodes and len(edges) == r.graph.n_edges


pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install -y chromium)")


def test_browser_pruning_equals_prune_on_a_tiny_random_model(rm64):
    from circuits import attribute
    from circuits.attribution import Contrast, TopLogits

    for target in (Contrast(" Mary", " John"), TopLogits(0.9, 5)):
        graph = attribute(rm64, PROMPT, target, method="analytic")
        assert graph.n_edges > 100
        _check_same(graph)


def test_browser_pruning_equals_prune_on_the_organism_example():
    from circuits import ReplacementModel, attribute, load_dictionaries, load_model
    from circuits.attribution import Contrast

    model, _ = load_model("organism")
    graph = attribute(ReplacementModel(model, load_dictionaries("organism", model)), PROMPT,
                      Contrast(" Mary", " John"))
    assert graph.n_nodes > 2000 and graph.edge_weight.dtype == torch.float32
    _check_same(graph)


def test_the_served_folder_has_the_frontend_and_plotly_and_published_graphs(rm64):
    from circuits import attribute
    from circuits.attribution import Contrast

    folder = component_dir()
    for name in ("index.html", "prune.js", "view.js", "plotly.min.js"):
        assert (folder / name).stat().st_size > 0
    assert (folder / "prune.js").read_bytes() == (FRONTEND / "prune.js").read_bytes()
    graph = attribute(rm64, PROMPT, Contrast(" Mary", " John"), method="analytic")
    first = publish(pack(graph, [""] * graph.n_nodes, {}))
    data = (folder / first["data_url"]).read_bytes()
    for offset, length in first["index"].values():
        assert offset % 8 == 0 and offset + length <= len(data)
    assert graph.edge_weight.dtype == torch.float64 and first["meta"]["w64"]  # weights go in their own precision
    assert first["index"]["w"][1] == 8 * graph.n_edges and first["index"]["tgt"][1] == 2 * graph.n_edges
    second = publish(pack(graph, [""] * graph.n_nodes, {}), retire=first["graph_id"])
    assert not (folder / first["data_url"]).exists() and (folder / second["data_url"]).exists()
