// The explorer's graph view (a Streamlit component, plain JS, no build step). It fetches the full graph and the
// server's node ranking once per graph (a file the app publishes next to this page), re-prunes in the browser
// whenever a threshold control moves (prune.js) and redraws at once; it then reports the thresholds (debounced) and
// node clicks back to the app, which reruns its other tabs with them. Protocol: Streamlit's component messages over
// postMessage ("streamlit:render" in; "componentReady", "setComponentValue", "setFrameHeight" out).
"use strict";

const EDGE_LIMIT = 1500; // the strongest edges drawn (as the server-side figure)
const REPORT_DELAY_MS = 250;
let G = null, meta = null, graphId = null, epoch = null;
let state = { node: 0.8, edge: 0.98, cap: null };
let selected = null, userLabels = {}, seq = 0, reportTimer = null, lastDraw = "", loadStart = null;
const instance = Math.random().toString(36).slice(2); // tells this view's reports from an earlier one's

function send(type, data) {
  window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type }, data), "*");
}

function load(args) {
  meta = args.meta;
  G = graphFromArgs(args);
}

function syncControls() {
  document.getElementById("node").value = state.node;
  document.getElementById("edge").value = state.edge;
  document.getElementById("cap").value = state.cap === null ? 0 : state.cap;
  document.getElementById("node_v").textContent = state.node.toFixed(2);
  document.getElementById("edge_v").textContent = state.edge.toFixed(2);
}

function strongestEdges(edges, limit) {
  // the `limit` kept edges of largest |weight| (a native sort of the magnitudes finds the cut; ties by index)
  if (edges.length <= limit) return edges;
  const mags = new Float64Array(edges.length);
  for (let j = 0; j < edges.length; j++) mags[j] = Math.abs(G.w[edges[j]]);
  const cut = mags.slice().sort()[edges.length - limit];
  let ties = 0;
  for (let j = 0; j < edges.length; j++) if (mags[j] > cut) ties++;
  ties = limit - ties; // how many edges at exactly the cut still fit
  const out = [];
  for (let j = 0; j < edges.length; j++) {
    if (mags[j] > cut || (mags[j] === cut && ties-- > 0)) out.push(edges[j]);
  }
  return out;
}

function figure(result) {
  const { nodeMask, edges } = result;
  const shown = [];
  for (let i = 0; i < G.n; i++) if (nodeMask[i]) shown.push(i);
  // layout: x = token position (nodes of one sublayer and position spread around it by influence), y = sublayer
  const slots = new Map();
  for (const i of shown) {
    const key = G.rank[i] * 100000 + G.pos[i];
    if (!slots.has(key)) slots.set(key, []);
    slots.get(key).push(i);
  }
  const x = new Float64Array(G.n), y = new Float64Array(G.n);
  for (const rows of slots.values()) {
    rows.sort((a, b) => G.influence[b] - G.influence[a] || a - b);
    const step = Math.min(0.8 / Math.max(1, rows.length), 0.2);
    rows.forEach((i, k) => { x[i] = G.pos[i] + (k - (rows.length - 1) / 2) * step; y[i] = G.rank[i]; });
  }
  // edges go to a canvas under the plot (drawEdges): plotly's SVG lines were most of the redraw time
  const edgeGroups = [];
  if (edges.length) {
    let scale = 0;
    for (const e of edges) scale = Math.max(scale, Math.abs(G.w[e]));
    const strongest = strongestEdges(edges, EDGE_LIMIT);
    for (const [lo, hi, width] of [[0.0, 0.15, 0.6], [0.15, 0.5, 1.6], [0.5, 1.01, 3.0]]) { // faint ones first
      for (const [sign, colour] of [[1, "33,102,172"], [-1, "178,24,43"]]) {
        const segs = [];
        for (const e of strongest) {
          const v = G.w[e], r = Math.abs(v) / scale;
          if ((v >= 0) !== (sign > 0) || r < lo || r >= hi) continue;
          segs.push(x[G.src[e]], y[G.src[e]], x[G.tgt[e]], y[G.tgt[e]]);
        }
        if (segs.length) edgeGroups.push({ width, colour: `rgba(${colour},${0.35 + 0.5 * lo})`, segs });
      }
    }
  }
  const traces = [];
  let maxInf = 1e-12;
  for (const i of shown) maxInf = Math.max(maxInf, G.influence[i]);
  meta.kinds.forEach((kind, code) => {
    const rows = shown.filter((i) => G.kind[i] === code);
    if (!rows.length) return;
    const label = (i) => userLabels[meta.ids[i]] || meta.labels[i];
    traces.push({
      type: "scatter", mode: "markers", name: kind, x: rows.map((i) => x[i]), y: rows.map((i) => y[i]),
      customdata: rows,
      hovertext: rows.map((i) => `${label(i)}<br>activation ${G.activation[i].toFixed(3)}<br>influence ` +
                                  G.influence[i].toFixed(4)),
      hoverinfo: "text",
      marker: { size: rows.map((i) => 8 + 30 * Math.sqrt(Math.max(G.influence[i], 0) / maxInf)),
                color: meta.colours[kind] || "#777",
                line: { width: rows.map((i) => (i === selected ? 4 : 1)),
                        color: rows.map((i) => (i === selected ? "#000" : "#333")) } },
    });
  });
  const ranks = meta.rank_names.map((r) => r[0]);
  const layout = {
    height: 620, margin: { l: 10, r: 10, t: 10, b: 10 }, clickmode: "event", hovermode: "closest",
    // fixed ranges (every token column and sublayer row, whatever is shown): no autorange pass on each redraw
    xaxis: { tickmode: "array", tickvals: meta.tokens.map((_, k) => k), ticktext: meta.tokens, showgrid: false,
             range: [-0.6, Math.max(meta.tokens.length, 1) - 0.4], zeroline: false, automargin: true },
    yaxis: { tickmode: "array", tickvals: ranks, ticktext: meta.rank_names.map((r) => r[1]), showgrid: true,
             range: [Math.min(...ranks) - 0.6, Math.max(...ranks) + 0.6], zeroline: false, automargin: true },
    legend: { orientation: "h" }, uirevision: graphId,
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", // the edge canvas shows through
  };
  return { traces, layout, edgeGroups, nNodes: shown.length, nEdges: edges.length };
}

let edgeGroups = [];

function drawEdges() {
  // the edges on the canvas under the plot, in the plot's current axis ranges (redrawn on zoom and pan)
  const plot = document.getElementById("plot"), canvas = document.getElementById("edges");
  const full = plot._fullLayout;
  if (!full || !full.xaxis || !full.yaxis) return;
  const width = plot.clientWidth, height = plot.clientHeight, dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const xa = full.xaxis, ya = full.yaxis;
  ctx.save();
  ctx.beginPath();
  ctx.rect(xa._offset, ya._offset, xa._length, ya._length);
  ctx.clip();
  for (const g of edgeGroups) {
    ctx.strokeStyle = g.colour;
    ctx.lineWidth = g.width;
    ctx.beginPath();
    for (let k = 0; k < g.segs.length; k += 4) {
      ctx.moveTo(xa._offset + xa.l2p(g.segs[k]), ya._offset + ya.l2p(g.segs[k + 1]));
      ctx.lineTo(xa._offset + xa.l2p(g.segs[k + 2]), ya._offset + ya.l2p(g.segs[k + 3]));
    }
    ctx.stroke();
  }
  ctx.restore();
}

// plotly.min.js (3.5 MB) loads after this script (async): the graph is fetched and unpacked meanwhile, and drawing
// waits for it
const plotlyReady = new Promise((resolve) => {
  if (window.Plotly) { resolve(); return; }
  const tag = document.getElementById("plotly-js");
  tag.addEventListener("load", () => resolve());
  tag.addEventListener("error", () => showError("could not load plotly.min.js"));
});

window.addEventListener("resize", () => setTimeout(drawEdges, 150));

function clearView() {
  // a new graph was asked for: the old one must not stay on screen under the page's new title while it loads
  const plot = document.getElementById("plot"), canvas = document.getElementById("edges");
  if (window.Plotly) Plotly.purge(plot);
  delete plot.dataset.bound;
  edgeGroups = [];
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  const status = document.getElementById("status");
  status.textContent = "loading the graph ...";
  delete status.dataset.graph;
  lastDraw = "";
}

function draw(force) {
  if (!window.Plotly) { plotlyReady.then(() => draw(force)); return; }
  const key = JSON.stringify([graphId, state, selected, userLabels]);
  if (!force && key === lastDraw) return;
  lastDraw = key;
  const t0 = performance.now();
  const result = pruneGraph(G, state.node, state.edge, state.cap);
  const t1 = performance.now();
  const fig = figure(result);
  edgeGroups = fig.edgeGroups;
  const plot = document.getElementById("plot"), drawing = graphId;
  Plotly.react(plot, fig.traces, fig.layout, { displaylogo: false, responsive: true }).then(() => {
    if (drawing !== graphId) return; // another graph was asked for meanwhile (clearView)
    drawEdges();
    const t2 = performance.now();
    const status = document.getElementById("status");
    status.textContent = `showing ${fig.nNodes.toLocaleString("en")} of ${G.n.toLocaleString("en")} nodes, ` +
      `${fig.nEdges.toLocaleString("en")} edges`;
    status.dataset.pruneMs = (t1 - t0).toFixed(1);
    status.dataset.drawMs = (t2 - t1).toFixed(1);
    status.dataset.nodes = fig.nNodes;
    status.dataset.edges = fig.nEdges;
    status.dataset.graph = graphId;
    if (loadStart !== null) { status.dataset.loadMs = (t2 - loadStart).toFixed(1); loadStart = null; }
    if (!plot.dataset.bound) {
      plot.dataset.bound = "1";
      plot.on("plotly_relayout", drawEdges);
      plot.on("plotly_relayouting", drawEdges);
      plot.on("plotly_click", (ev) => {
        const p = ev.points && ev.points[0];
        if (!p || p.customdata === undefined) return;
        selected = p.customdata;
        draw();
        report(true);
      });
    }
    send("streamlit:setFrameHeight", { height: document.body.scrollHeight });
  });
}

function report(now) {
  clearTimeout(reportTimer);
  const go = () => send("streamlit:setComponentValue", {
    value: { instance, seq: ++seq, graph_id: graphId, node_threshold: state.node, edge_threshold: state.edge,
             cap: state.cap, selected },
    dataType: "json",
  });
  if (now) go(); else reportTimer = setTimeout(go, REPORT_DELAY_MS);
}

function onControl() {
  state.node = Number(document.getElementById("node").value);
  state.edge = Number(document.getElementById("edge").value);
  const cap = Math.min(5000, Math.max(0, Math.floor(Number(document.getElementById("cap").value) || 0))); // as the sidebar
  state.cap = cap === 0 ? null : cap;
  syncControls();
  draw();
  report(false);
}

for (const id of ["node", "edge"]) document.getElementById(id).addEventListener("input", onControl);
document.getElementById("cap").addEventListener("change", onControl);

let latest = null, loading = null; // the last render's arguments; the graph id being fetched

function showError(err) {
  document.getElementById("error").textContent = `the graph view failed: ${err}`;
  send("streamlit:setFrameHeight", { height: document.body.scrollHeight });
}

function apply() {
  // the latest arguments, once their graph is loaded
  const args = latest;
  if (!args || args.graph_id !== graphId) return;
  if (args.epoch !== epoch) { // a new graph, or thresholds set in the sidebar: adopt the server's values
    epoch = args.epoch;
    state = { node: args.thresholds.node, edge: args.thresholds.edge, cap: args.thresholds.cap };
    syncControls();
  }
  selected = args.selected === undefined ? null : args.selected;
  userLabels = args.user_labels || {};
  draw();
}

function fetchGraph(args) {
  // the gzip file when there is one (inflated here, natively), else the raw arrays
  const ok = (r) => { if (!r.ok) throw new Error(`could not fetch the graph (HTTP ${r.status})`); return r; };
  if (args.gz_url && typeof DecompressionStream !== "undefined") {
    return fetch(args.gz_url).then(ok)
      .then((r) => new Response(r.body.pipeThrough(new DecompressionStream("gzip"))).arrayBuffer());
  }
  return fetch(args.data_url).then(ok).then((r) => r.arrayBuffer());
}

window.addEventListener("message", (ev) => {
  const d = ev.data;
  if (!d || d.type !== "streamlit:render") return;
  latest = d.args;
  if (latest.graph_id === graphId) { try { apply(); } catch (err) { showError(err); } return; }
  if (latest.graph_id === loading) return;
  const wanted = loading = latest.graph_id;
  const started = performance.now();
  if (graphId !== null) { graphId = null; clearView(); }
  fetchGraph(latest)
    .then((buf) => {
      if (loading !== wanted) return; // a newer graph was asked for meanwhile
      const args = { meta: latest.meta };
      for (const [name, [offset, length]] of Object.entries(latest.index)) args[name] = new Uint8Array(buf, offset, length);
      loadStart = started;
      load(args);
      graphId = wanted;
      epoch = null;
      loading = null;
      apply();
    })
    .catch(showError);
});

send("streamlit:componentReady", { apiVersion: 1 });
