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
// supernodes (meta.supernodes: [{name, members: [node index]}]) start collapsed; a click on one expands it, a click
// on an expanded member (or the list) collapses it again. meta.paths: [{text, weight, nodes: [node index]}].
// grouping: "supernodes" (meta.supernodes), "cells" (meta.cells: every layer × position cell) or "none"
let grouping = "supernodes", expanded = new Set(), highlight = null;

let userGroups = []; // supernodes made on the page ({name, members}), drawn before the automatic ones
let groupCache = null, groupCacheKey = null;

function groupList() {
  if (grouping === "cells") return meta.cells || [];
  if (grouping !== "supernodes") return [];
  const key = JSON.stringify([graphId, userGroups]);
  if (groupCacheKey === key) return groupCache;
  // the page's supernodes first; automatic (and stored) ones keep only members no earlier group took
  const taken = new Set(), out = [];
  for (const g of [...userGroups, ...(meta.supernodes || []).filter((g) => !g.stored)]) {
    const members = g.members.filter((i) => !taken.has(i));
    if (members.length < 2) continue;
    for (const i of members) taken.add(i);
    out.push({ name: g.name, members });
  }
  groupCache = out;
  groupCacheKey = key;
  return out;
}
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

function strongestEdges(edges, limit, magnitude) {
  // the `limit` edges of largest magnitude (a native sort of the magnitudes finds the cut; ties by index)
  if (edges.length <= limit) return edges;
  const mags = new Float64Array(edges.length);
  for (let j = 0; j < edges.length; j++) mags[j] = magnitude(edges[j]);
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

function groupsOf(nodeMask) {
  // node index -> supernode index, for the collapsed supernodes with at least two members shown
  const groupOf = new Map();
  groupList().forEach((sn, k) => {
    if (expanded.has(k)) return;
    const shownMembers = sn.members.filter((i) => nodeMask[i] && !groupOf.has(i));
    if (shownMembers.length >= 2) for (const i of shownMembers) groupOf.set(i, k);
  });
  return groupOf;
}

let shownNow = new Set(); // node indices the current pruning keeps

function figure(result) {
  const { nodeMask, edges } = result;
  shownNow = new Set();
  for (let i = 0; i < G.n; i++) if (nodeMask[i]) shownNow.add(i);
  const groupOf = groupsOf(nodeMask);
  const shown = [];
  for (let i = 0; i < G.n; i++) if (nodeMask[i] && !groupOf.has(i)) shown.push(i);
  // one marker per collapsed supernode: index G.n + k, in the cell of its first shown member
  const groupRows = new Map(); // k -> [member node indices shown]
  for (const [i, k] of groupOf) { if (!groupRows.has(k)) groupRows.set(k, []); groupRows.get(k).push(i); }
  const N = G.n + groupList().length;
  const rankOf = (v) => (v < G.n ? G.rank[v] : G.rank[groupRows.get(v - G.n)[0]]);
  const posOf = (v) => (v < G.n ? G.pos[v] : G.pos[groupRows.get(v - G.n)[0]]);
  const infOf = (v) => (v < G.n ? G.influence[v] : groupRows.get(v - G.n).reduce((a, i) => a + G.influence[i], 0));
  const vis = (i) => (groupOf.has(i) ? G.n + groupOf.get(i) : i); // the marker a node is drawn as
  const markers = shown.concat([...groupRows.keys()].sort((a, b) => a - b).map((k) => G.n + k));
  // layout: x = token position (nodes of one sublayer and position spread around it by influence), y = sublayer
  const slots = new Map();
  for (const v of markers) {
    const key = rankOf(v) * 100000 + posOf(v);
    if (!slots.has(key)) slots.set(key, []);
    slots.get(key).push(v);
  }
  const x = new Float64Array(N), y = new Float64Array(N);
  for (const rows of slots.values()) {
    rows.sort((a, b) => infOf(b) - infOf(a) || a - b);
    const step = Math.min(0.8 / Math.max(1, rows.length), 0.2);
    rows.forEach((v, k) => { x[v] = posOf(v) + (k - (rows.length - 1) / 2) * step; y[v] = rankOf(v); });
  }
  // edges between markers: a collapsed supernode's edges are summed; edges inside one are not drawn
  const merged = new Map(); // s * N + t -> [s, t, summed weight]
  for (const e of edges) {
    const s = vis(G.src[e]), t = vis(G.tgt[e]);
    if (s === t) continue;
    const key = s * N + t;
    if (!merged.has(key)) merged.set(key, [s, t, 0]);
    merged.get(key)[2] += G.w[e];
  }
  const drawn = [...merged.values()];
  // edges go to a canvas under the plot (drawEdges): plotly's SVG lines were most of the redraw time
  const edgeGroups = [];
  if (drawn.length) {
    let scale = 0;
    for (const d of drawn) scale = Math.max(scale, Math.abs(d[2]));
    const strongest = strongestEdges(drawn, EDGE_LIMIT, (d) => Math.abs(d[2]));
    for (const [lo, hi, width] of [[0.0, 0.15, 0.6], [0.15, 0.5, 1.6], [0.5, 1.01, 3.0]]) { // faint ones first
      for (const [sign, colour] of [[1, "33,102,172"], [-1, "178,24,43"]]) {
        const segs = [];
        for (const [s, t, v] of strongest) {
          const r = Math.abs(v) / scale;
          if ((v >= 0) !== (sign > 0) || r < lo || r >= hi) continue;
          segs.push(x[s], y[s], x[t], y[t]);
        }
        if (segs.length) edgeGroups.push({ width, colour: `rgba(${colour},${0.35 + 0.5 * lo})`, segs });
      }
    }
  }
  // the highlighted route: one line from step to step, through the centre of each step's shown markers
  const centres = routeCentres(vis, x, y);
  const route = [];
  for (let k = 0; k + 1 < centres.length; k++) {
    if (centres[k] && centres[k + 1]) route.push(centres[k][0], centres[k][1], centres[k + 1][0], centres[k + 1][1]);
  }
  if (route.length) edgeGroups.push({ width: 5, colour: "rgba(230,120,0,0.85)", segs: route }); // drawn last: on top
  const traces = [];
  let maxInf = 1e-12;
  for (const v of markers) maxInf = Math.max(maxInf, infOf(v));
  const onPathNodes = pathNodes(vis);
  const outline = (v) => (v === selected ? 4 : onPathNodes.has(v) ? 3 : 1);
  const outlineColour = (v) => (v === selected ? "#000" : onPathNodes.has(v) ? "#e67800" : "#333");
  const inGroup = new Set();
  groupList().forEach((sn, k) => { if (expanded.has(k)) for (const i of sn.members) inGroup.add(i); });
  const kindNames = { token: "token", attn_feature: "attention feature", mlp_feature: "transcoder feature",
                      attn_error: "attention error", mlp_error: "MLP error", logit: "logit",
                      logit_diff: "logit difference" }; // the legend's words for the node kinds
  meta.kinds.forEach((kind, code) => {
    const rows = shown.filter((i) => G.kind[i] === code);
    if (!rows.length) return;
    const label = (i) => userLabels[meta.ids[i]] || meta.labels[i];
    traces.push({
      type: "scatter", mode: "markers", name: kindNames[kind] || kind, x: rows.map((i) => x[i]), y: rows.map((i) => y[i]),
      customdata: rows,
      hovertext: rows.map((i) => `${label(i)}<br>activation ${G.activation[i].toFixed(3)}<br>influence ` +
                                  G.influence[i].toFixed(4) + (inGroup.has(i) ? "<br>(in an expanded supernode)" : "")),
      hoverinfo: "text",
      marker: { size: rows.map((i) => 8 + 30 * Math.sqrt(Math.max(G.influence[i], 0) / maxInf)),
                color: meta.colours[kind] || "#777",
                symbol: rows.map((i) => (inGroup.has(i) ? "square" : "circle")),
                line: { width: rows.map(outline), color: rows.map(outlineColour) } },
    });
  });
  const groups = markers.filter((v) => v >= G.n);
  if (groups.length) {
    traces.push({
      type: "scatter", mode: "markers+text", name: "supernode", x: groups.map((v) => x[v]), y: groups.map((v) => y[v]),
      customdata: groups.map((v) => `g${v - G.n}`),
      text: groups.map((v) => `×${groupRows.get(v - G.n).length}`), textposition: "middle center",
      textfont: { size: 10, color: "#fff" },
      hovertext: groups.map((v) => `${groupList()[v - G.n].name}<br>${groupRows.get(v - G.n).length} features ` +
                                   `shown (click to expand)<br>influence ${infOf(v).toFixed(4)}`),
      hoverinfo: "text",
      marker: { symbol: "diamond", size: groups.map((v) => 14 + 30 * Math.sqrt(Math.max(infOf(v), 0) / maxInf)),
                color: "#6a51a3", line: { width: groups.map(outline), color: groups.map(outlineColour) } },
    });
  }
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
  let nMembers = 0;
  for (const rows of groupRows.values()) nMembers += rows.length;
  return { traces, layout, edgeGroups, nNodes: shown.length + nMembers, nEdges: edges.length,
           nMarkers: markers.length, nGroups: groups.length };
}

function stepOf() {
  // node index -> its step in the highlighted route (a step is a token, a cell of features, an error, the target)
  const out = new Map();
  if (highlight === null || !meta.paths || !meta.paths[highlight]) return out;
  meta.paths[highlight].steps.forEach((rows, k) => { for (const i of rows) out.set(i, k); });
  return out;
}

function routeCentres(vis, x, y) {
  // per step of the highlighted route: [x, y] of the mean of its shown markers (null when none is shown)
  if (highlight === null || !meta.paths || !meta.paths[highlight]) return [];
  return meta.paths[highlight].steps.map((rows) => {
    const seen = new Set();
    for (const i of rows) if (shownNow.has(i)) seen.add(vis(i));
    if (!seen.size) return null;
    let sx = 0, sy = 0;
    for (const v of seen) { sx += x[v]; sy += y[v]; }
    return [sx / seen.size, sy / seen.size];
  });
}

function pathNodes(vis) {
  const out = new Set();
  for (const i of stepOf().keys()) out.add(vis(i));
  return out;
}

function listPaths() {
  // the top paths under the plot: a click highlights one (again: clears it)
  const box = document.getElementById("paths");
  box.textContent = "";
  if (!meta.paths || !meta.paths.length) return;
  const title = document.createElement("div");
  title.textContent = "top routes (weight = share of the target's attribution along the route; click to highlight):";
  box.appendChild(title);
  meta.paths.forEach((p, k) => {
    const b = document.createElement("button");
    b.className = "path" + (k === highlight ? " on" : "");
    b.dataset.index = k;
    b.textContent = p.text;
    b.addEventListener("click", () => { highlight = highlight === k ? null : k; listPaths(); draw(true); });
    box.appendChild(b);
  });
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

let sentHeight = -1, drawnWidth = 0;

function sendHeight() {
  // the frame's height, whenever it changes (a view drawn inside a hidden tab measured 0)
  const h = document.body.scrollHeight;
  if (h !== sentHeight) { sentHeight = h; send("streamlit:setFrameHeight", { height: h }); }
}

// A view drawn while its tab was hidden had no width and sent a height of 0; when the tab is shown the frame gets
// its width back (a resize), and the graph is drawn again at its size.
window.addEventListener("resize", () => {
  if (graphId !== null && window.innerWidth > 0 && window.innerWidth !== drawnWidth) draw(true);
  else sendHeight();
});

function draw(force) {
  if (!window.Plotly) { plotlyReady.then(() => draw(force)); return; }
  const key = JSON.stringify([graphId, state, selected, userLabels, userGroups, grouping, [...expanded], highlight]);
  if (!force && key === lastDraw) { sendHeight(); return; }
  drawnWidth = window.innerWidth;
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
      `${fig.nEdges.toLocaleString("en")} edges` + (fig.nGroups ? ` (${fig.nGroups} ${grouping === "cells" ? "cells" : "supernodes"} collapsed)` : "");
    status.dataset.markers = fig.nMarkers;
    status.dataset.groups = fig.nGroups;
    status.dataset.expanded = expanded.size;
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
        if (typeof p.customdata === "string" && p.customdata[0] === "g") { // a supernode: expand it
          expanded.add(Number(p.customdata.slice(1)));
          draw();
          return;
        }
        const k = memberOf(p.customdata);
        if (k !== null && ev.event && ev.event.altKey) { expanded.delete(k); draw(); return; } // alt-click: merge back
        selected = p.customdata;
        draw();
        report(true);
      });
    }
    sendHeight();
  });
}

function memberOf(i) {
  // the expanded supernode a node belongs to (or null)
  const list = groupList();
  for (const k of expanded) if (list[k] && list[k].members.includes(i)) return k;
  return null;
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
document.getElementById("grouping").addEventListener("change", (ev) => {
  grouping = ev.target.value;
  expanded = new Set();
  draw();
});
document.getElementById("collapse").addEventListener("click", () => { expanded = new Set(); draw(); });
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
  const groups = args.user_groups || [];
  if (JSON.stringify(groups) !== JSON.stringify(userGroups)) { userGroups = groups; expanded = new Set(); }
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
      expanded = new Set();
      highlight = null;
      listPaths();
      graphId = wanted;
      epoch = null;
      loading = null;
      apply();
    })
    .catch(showError);
});

send("streamlit:componentReady", { apiVersion: 1 });
