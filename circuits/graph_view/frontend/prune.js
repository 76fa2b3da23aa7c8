// Re-pruning in the browser: steps 3-5 of circuits/pruning.py `prune`, on the ranking that `rank_nodes` computed
// (step 2, sent by the server). Same float64 arithmetic in the same order and the same stable tie-breaking, so for
// any thresholds the kept nodes and edges are those of the library's `prune` (tests/test_graph_view.py checks it).
//
// G: {n, m, tgt: Uint16Array|Int32Array[m], src: (same), w: Float32Array|Float64Array[m], rank: Int32Array[n],
//     always: Uint8Array[n], isFeature: Uint8Array[n], targetWeight: Float64Array[n],
//     order: Int32Array[k] (node indices, most influential first), before: Float64Array[k], total: number}
"use strict";

function bytesAs(u8, Type) {
  // a typed view of the bytes; copied only when they do not start on a multiple of the element size
  const u = u8.byteOffset % Type.BYTES_PER_ELEMENT === 0 ? u8 : u8.slice();
  return new Type(u.buffer, u.byteOffset, u.byteLength / Type.BYTES_PER_ELEMENT);
}

function graphFromArgs(args) {
  // G from the component's arguments (circuits/graph_view/__init__.py `pack`: JSON `meta` and raw byte arrays)
  const meta = args.meta;
  const flags = bytesAs(args.node_flags, Uint8Array);
  return {
    n: meta.n, m: meta.m, total: meta.total,
    tgt: bytesAs(args.tgt, meta.idx16 ? Uint16Array : Int32Array),
    src: bytesAs(args.src, meta.idx16 ? Uint16Array : Int32Array),
    w: bytesAs(args.w, meta.w64 ? Float64Array : Float32Array),
    rank: bytesAs(args.rank, Int32Array), pos: bytesAs(args.pos, Int32Array),
    kind: bytesAs(args.kind, Uint8Array),
    always: flags.map((f) => f & 1), isFeature: flags.map((f) => (f >> 1) & 1),
    targetWeight: bytesAs(args.target_weight, Float64Array), influence: bytesAs(args.influence, Float64Array),
    activation: bytesAs(args.activation, Float32Array),
    order: bytesAs(args.order, Int32Array), before: bytesAs(args.before, Float64Array),
  };
}

function edgesByRank(G) {
  // Edge indices sorted by their target's rank, highest first; ascending index within a rank (a counting sort).
  if (G._byRank) return G._byRank;
  let maxRank = 0;
  for (let i = 0; i < G.n; i++) maxRank = Math.max(maxRank, G.rank[i]);
  const count = new Int32Array(maxRank + 2);
  for (let e = 0; e < G.m; e++) count[maxRank - G.rank[G.tgt[e]] + 1]++;
  for (let r = 1; r < count.length; r++) count[r] += count[r - 1];
  const out = new Int32Array(G.m);
  for (let e = 0; e < G.m; e++) out[count[maxRank - G.rank[G.tgt[e]]]++] = e;
  G._byRank = out;
  return out;
}

function smallestSetReaching(scores, threshold) {
  // Positions i (of `scores`) kept by pruning.py `_smallest_set_reaching`: sort the positive scores descending
  // (ties: lower position first), before_k = cumsum_k - s_k, keep where before_k < threshold * total.
  let nPos = 0;
  for (let i = 0; i < scores.length; i++) if (scores[i] > 0) nPos++;
  const keep = new Uint8Array(scores.length);
  if (nPos === 0) return keep;
  const sorted = new Float64Array(nPos);
  let j = 0;
  for (let i = 0; i < scores.length; i++) if (scores[i] > 0) sorted[j++] = scores[i];
  sorted.sort(); // ascending; walked from the end
  const cumsum = new Float64Array(nPos);
  let c = 0;
  for (let k = 0; k < nPos; k++) { c += sorted[nPos - 1 - k]; cumsum[k] = c; }
  const limit = threshold * c;
  // kept sorted positions form a prefix in exact arithmetic; check it, and fall back to an index sort if not
  let nKept = 0, prefix = true;
  for (let k = 0; k < nPos; k++) {
    const kept = cumsum[k] - sorted[nPos - 1 - k] < limit;
    if (kept) { if (nKept !== k) prefix = false; nKept++; }
  }
  if (!prefix) return smallestSetReachingSlow(scores, threshold, c);
  if (nKept === 0) return keep;
  const cut = sorted[nPos - nKept]; // the smallest kept score
  let tiesKept = 0; // how many scores equal to `cut` are kept (ties go to the lower position)
  for (let k = 0; k < nKept; k++) if (sorted[nPos - 1 - k] === cut) tiesKept++;
  for (let i = 0; i < scores.length; i++) {
    if (scores[i] > cut) keep[i] = 1;
    else if (scores[i] === cut && tiesKept > 0) { keep[i] = 1; tiesKept--; }
  }
  return keep;
}

function smallestSetReachingSlow(scores, threshold, total) {
  const idx = [];
  for (let i = 0; i < scores.length; i++) if (scores[i] > 0) idx.push(i);
  idx.sort((a, b) => scores[b] - scores[a] || a - b);
  const keep = new Uint8Array(scores.length);
  let c = 0;
  for (const i of idx) { c += scores[i]; if (c - scores[i] < threshold * total) keep[i] = 1; }
  return keep;
}

function pruneGraph(G, nodeThreshold, edgeThreshold, cap) {
  // -> {nodeMask: Uint8Array[n], edges: Int32Array (kept edge indices, ascending)}
  const n = G.n, tgt = G.tgt, src = G.src, w = G.w;
  const keep = new Uint8Array(n);
  for (let i = 0; i < n; i++) keep[i] = G.always[i];
  const nodeLimit = nodeThreshold * G.total;
  for (let k = 0; k < G.order.length; k++) if (G.before[k] < nodeLimit) keep[G.order[k]] = 1;
  if (cap !== null && cap !== undefined) {
    let seen = 0;
    for (let k = 0; k < G.order.length; k++) {
      const i = G.order[k];
      if (keep[i] && G.isFeature[i] && ++seen > cap) keep[i] = 0;
    }
  }
  // the node-pruned graph: normalised |weights| a = |w| / Σ|w| into the target (as pruning.py `_normalize`) and
  // influence (one sweep over the edges, highest target rank first)
  if (!G._kept || G._kept.length < G.m) G._kept = new Int32Array(G.m); // reused between calls
  const kept1 = G._kept;
  const rowsum = new Float64Array(n);
  let m1 = 0;
  for (let e = 0; e < G.m; e++) {
    if (keep[tgt[e]] && keep[src[e]]) { rowsum[tgt[e]] += Math.abs(w[e]); kept1[m1++] = e; }
  }
  const norm = (e) => { const d = rowsum[tgt[e]]; return d > 0 ? Math.abs(w[e]) / Math.max(d, 2.2250738585072014e-308) : 0; };
  const inf = new Float64Array(n), tw = G.targetWeight;
  const byRank = edgesByRank(G);
  for (let q = 0; q < byRank.length; q++) {
    const e = byRank[q], t = tgt[e];
    if (keep[t] && keep[src[e]]) inf[src[e]] += (inf[t] + tw[t]) * norm(e);
  }
  const scores = new Float64Array(m1);
  for (let j = 0; j < m1; j++) { const e = kept1[j], t = tgt[e]; scores[j] = norm(e) * (inf[t] + tw[t]); }
  const chosen = smallestSetReaching(scores, edgeThreshold);
  let edges = [];
  for (let j = 0; j < m1; j++) if (chosen[j]) edges.push(kept1[j]);
  // dangling nodes: features and errors with no kept outgoing edge, features with no kept incoming edge
  for (;;) {
    const hasOut = new Uint8Array(n), hasIn = new Uint8Array(n);
    for (const e of edges) { hasOut[src[e]] = 1; hasIn[tgt[e]] = 1; }
    let dropped = false;
    for (let i = 0; i < n; i++) {
      if (keep[i] && !G.always[i] && (!hasOut[i] || (G.isFeature[i] && !hasIn[i]))) { keep[i] = 0; dropped = true; }
    }
    if (!dropped) break;
    edges = edges.filter((e) => keep[tgt[e]] && keep[src[e]]);
  }
  return { nodeMask: keep, edges: Int32Array.from(edges) };
}

if (typeof module !== "undefined") module.exports = { graphFromArgs, pruneGraph, smallestSetReaching };
