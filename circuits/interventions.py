"""Interventions on the replacement model: set, scale or zero features (and error nodes), ablate everything outside
a circuit, and measure what moves.

All interventions run the replacement model with every dictionary spliced in and **error terms held at their clean
values** (errors are exogenous nodes, as in the graph), so that an empty intervention reproduces the clean logits
exactly. Options:

* ``frozen=True`` holds LayerNorm scales and attention patterns at their clean values (the local replacement
  model); ``frozen=False`` lets them respond (QK and normalisation effects count);
* ``direct=True`` also holds every feature that is not intervened on at its clean code (and an MLP without a
  transcoder at its clean output), so a change reaches a target only along direct edges: with ``frozen=True`` this is
  exactly the linear model whose edges `attribute` computes, and scaling a source by 2 moves each target's
  pre-activation by that edge's weight. A skip transcoder's skip term stays live (it is a linear channel of the
  frozen model, not a node); a cross-layer transcoder feature's edit changes all its decoder writes (every later
  MLP output of the CLT is rebuilt from the edited codes).

Ablation faithfulness of a circuit C (Marks et al. 2024): ``(m(C) − m(∅)) / (m(M) − m(∅))``, where m(C) keeps the
circuit's features and error nodes live and ablates everything else; m(∅) ablates everything, and m(M) is the model.
What "everything else" is, is the **convention**, always named in the result (`Faithfulness.label`):

* **standard mean ablation** (``Ablation("mean")``, ``convention="standard"``, the default; Wang et al. 2022, Marks
  et al. 2024): every feature outside the circuit — *inactive ones included* — and every error node outside it take
  their mean over reference text. The full graph does not score exactly 1 (features silent on the prompt move to
  their means too);
* **held-inactive mean ablation** (``convention="held-inactive"``, a variant, not comparable with the literature):
  only the prompt's *graph nodes* are ablated; features inactive on the prompt keep their clean value, 0, so the
  full graph scores exactly 1;
* **zero ablation** (``Ablation("zero")``): every node outside the circuit is 0 (both conventions agree).

A single prompt's faithfulness is in-sample when the circuit was pruned on that prompt, and it means little
without a baseline: `random_baseline` keeps, instead of the circuit's features, as many random active features of
the same dictionaries at the same positions (the error nodes as the circuit's), which is what a circuit has to beat.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from circuits.errors import CircuitsError
from circuits.graph import Graph, Node
from circuits.model import hook_mlp_out, hook_resid_pre
from circuits.replacement import ReplacementCache, ReplacementModel, clt_upstream, reconstruct

Metric = Callable[[Tensor], Tensor]  # logits [pos, vocab] -> scalar
EditMode = Literal["set", "scale", "add"]
Convention = Literal["standard", "held-inactive"]
CONVENTIONS: tuple[Convention, ...] = ("standard", "held-inactive")


@dataclass(frozen=True)
class Edit:
    """Change one node: a feature's code, or an error node's / token's write (scale only, or add a multiple).

    A token node's activation is 1 (its write is the embedding), so on a token ``set v`` is ``scale v`` and ``add v``
    is ``scale 1 + v``."""

    node: Node
    mode: EditMode
    value: float

    def __post_init__(self):
        if not isinstance(self.node, Node):
            raise CircuitsError(f"edit: node {self.node!r} is a {type(self.node).__name__}, not a Node; turn an id "
                                "into one with circuits.ids.parse_node('M3#1184@14')")
        if self.mode not in ("set", "scale", "add"):
            raise CircuitsError(f"edit of {self.node.short()}: mode {self.mode!r} is not one of set, scale, add")
        if isinstance(self.value, str):
            raise CircuitsError(f"edit of {self.node.short()}: value {self.value!r} is text; give a number")
        try:
            finite = math.isfinite(float(self.value))
        except (TypeError, ValueError):
            raise CircuitsError(f"edit of {self.node.short()}: value {self.value!r} is not a number") from None
        if not finite:
            raise CircuitsError(f"edit of {self.node.short()}: value {self.value!r} is not finite; give a finite "
                                "number (NaN or infinity would make every logit NaN)")

    @staticmethod
    def zero(node: Node) -> Edit:
        return Edit(node, "scale", 0.0)


@dataclass
class InterventionResult:
    logits: Tensor  # [pos, vocab] after the intervention
    clean_logits: Tensor  # [pos, vocab]
    pre_activations: dict[str, Tensor]  # dictionary name -> [pos, d_sae] after
    codes: dict[str, Tensor]  # dictionary name -> [pos, d_sae] after
    metric: float | None = None
    clean_metric: float | None = None

    @property
    def logit_change(self) -> Tensor:
        return self.logits - self.clean_logits

    def feature_changes(self, cache: ReplacementCache, top: int = 10) -> list[tuple[Node, float, float]]:
        """The `top` features whose activation moved most: (node, clean, after)."""
        rows = []
        for name, after in self.codes.items():
            kind = "attn_feature" if name.startswith("attn") else "mlp_feature"
            layer = int(name.rsplit("L", 1)[1])
            diff = (after - cache.codes[name]).abs()
            flat = diff.flatten()
            for k in flat.topk(min(top, flat.numel())).indices.tolist():
                p, i = divmod(k, diff.shape[1])
                if flat[k] > 0:
                    rows.append((Node(kind, layer, p, i), float(cache.codes[name][p, i]), float(after[p, i])))
        rows.sort(key=lambda r: -abs(r[2] - r[1]))
        return rows[:top]


@dataclass
class Ablation:
    """Replacement values for ablated features and errors: zero, or means over reference text."""

    mode: Literal["zero", "mean"]
    code_means: dict[str, Tensor] = field(default_factory=dict)  # name -> [d_sae]
    error_means: dict[str, Tensor] = field(default_factory=dict)  # name -> [d_out] (or site -> [d_model])

    def code(self, name: str, like: Tensor) -> Tensor:
        if self.mode == "zero":
            return torch.zeros_like(like)
        return self.code_means[name].to(like.dtype).expand_as(like)

    def error(self, name: str, like: Tensor) -> Tensor:
        if self.mode == "zero":
            return torch.zeros_like(like)
        return self.error_means[name].to(like.dtype).expand_as(like)


@torch.no_grad()
def mean_ablation(rm: ReplacementModel, token_batches: Iterable[Tensor]) -> Ablation:
    """Mean codes and errors of every dictionary over reference token batches ([batch, pos] each)."""
    sums: dict[str, list[Tensor]] = {}
    count = 0
    for tokens in token_batches:
        codes_of, errors_of = rm.codes_and_errors(tokens)
        for name, codes in codes_of.items():
            c, e = codes.double().sum((0, 1)), errors_of[name].double().sum((0, 1))
            if name in sums:
                sums[name][0] += c
                sums[name][1] += e
            else:
                sums[name] = [c, e]
        count += tokens.numel()
    if count == 0:
        raise CircuitsError("mean ablation needs at least one batch of reference tokens")
    return Ablation("mean", {n: s[0] / count for n, s in sums.items()}, {n: s[1] / count for n, s in sums.items()})


def logit_diff_metric(model, token: str | int, baseline: str | int) -> Metric:
    """m(logits) = logit[token] − logit[baseline] at the last position."""
    from circuits.attribution.targets import single_token

    a, b = single_token(model, token), single_token(model, baseline)
    return lambda logits: logits[-1, a] - logits[-1, b]


def graph_metric(graph: Graph) -> tuple[Metric, str] | None:
    """The metric a graph's target defines — the logit difference for a contrast, else the first target logit —
    with a name; None for a feature target (no logit metric)."""
    from circuits.export import target_label

    targets = graph.metadata.get("targets", [])
    if not targets or targets[0]["node"][0] not in ("logit", "logit_diff"):
        return None
    if graph.metadata.get("contrast"):
        a, b = graph.metadata["contrast"]
        return (lambda logits: logits[-1, a] - logits[-1, b]), f"logit diff {target_label(targets[0])}"
    tok = int(targets[0]["node"][3])
    return (lambda logits: logits[-1, tok]), f"logit {target_label(targets[0])}"


def standard_ablations(rm: ReplacementModel) -> list[Ablation]:
    """Zero ablation, and for the organism mean ablation over 16 held-out corpus rows."""
    out = [Ablation("zero")]
    if getattr(rm, "name", None) == "organism":
        from circuits.organism.corpus import ToyWorldCorpus
        from circuits.organism.tokenizer import build_tokenizer
        from circuits.organism.train import batch_tokens

        rows = batch_tokens(ToyWorldCorpus(0), build_tokenizer(), 0, 16, rm.cfg.n_ctx, stream="heldout-dicts")
        out.append(mean_ablation(rm, [rows]))
    return out


def dictionary_of(rm: ReplacementModel, node: Node):
    """The dictionary a feature or error node belongs to (a clear error when the layer has none)."""
    table = rm.attention_saes if node.kind.startswith("attn") else rm.transcoders
    if node.layer not in table:
        raise CircuitsError(f"no dictionary for node {node.short()}; it cannot be edited")
    return table[node.layer]


def check_graph_fits(rm: ReplacementModel, graph, source: str = "graph") -> None:
    """`CircuitsError` naming the first node of `graph` (a loaded file) that `rm` cannot hold: a feature or error
    node of a layer without a dictionary, a feature index outside its dictionary, or a position past the graph's
    tokens. Run it when a file is opened, before any tab runs the model on the graph's nodes."""
    n_tokens = len(graph.metadata.get("tokens") or []) or None
    for node in graph.nodes:
        if n_tokens is not None and node.kind not in ("logit", "logit_diff") and not 0 <= node.pos < n_tokens:
            raise CircuitsError(f"{source}: node {node.short()} is at position {node.pos}, but the prompt has "
                                f"{n_tokens} tokens; the file is inconsistent")
        if not node.kind.endswith(("_feature", "_error")) or (node.kind == "mlp_error" and
                                                               node.layer not in rm.transcoders):
            continue  # an MLP error where the set has no transcoder is the whole MLP output (mlp_L)
        table = rm.attention_saes if node.kind.startswith("attn") else rm.transcoders
        if node.layer not in table:
            raise CircuitsError(f"{source}: node {node.short()} is of layer {node.layer}, where these dictionaries "
                                f"have none (layers {sorted(table)}); open it with the dictionaries it was traced with")
        d = table[node.layer]
        if node.kind.endswith("_feature") and not 0 <= node.index < d.d_sae:
            raise CircuitsError(f"{source}: node {node.short()}: {d.cfg.name} has features 0..{d.d_sae - 1}; the "
                                "file does not fit these dictionaries")


def run_edited(rm: ReplacementModel, cache: ReplacementCache, edits: Iterable[Edit] = (), *,
               frozen: bool = False, direct: bool = False,
               keep: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None, ablation: Ablation | None = None,
               grad_codes: dict | None = None, site_values: dict[str, tuple[Tensor, Tensor]] | None = None,
               gates: dict[str, tuple[Tensor, Tensor]] | None = None, outputs: dict | None = None,
               ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """One forward pass of the edited replacement model on `cache`'s prompt: (logits, pre-activations, codes).

    `keep` = (feature masks name -> [pos, d_sae] bool, error masks name -> [pos] bool): features and errors outside
    the masks are replaced by `ablation`'s values (the circuit's complement is ablated).
    `grad_codes`, when a dict, receives each dictionary's codes and error tensors (requires_grad) for gradients.
    `site_values` = name -> (codes [pos, d_sae], error [pos, d_out]) replaces those dictionaries' values outright.
    `gates` = name -> (feature gates [pos, d_sae], error gates [pos]): each value becomes ``ablated + gate ·
    (live − ablated)`` (1 = live, 0 = ablated; differentiable, for integrated gradients over the circuit).
    `outputs`, when a dict, receives each dictionary's output in its own space ([pos, d_out], decoded codes plus
    error; differentiable), e.g. for the gradient of a metric with respect to each head's z.
    """
    edits = list(edits)
    n = cache.n_pos
    feature_edits: dict[str, list[Edit]] = {}
    error_scale: dict[str, Tensor] = {}
    token_edits: list[Edit] = []
    for e in edits:
        if not 0 <= e.node.pos < n:
            raise CircuitsError(f"node {e.node.short()}: position {e.node.pos} is outside the prompt (0 to {n - 1})")
        if e.node.kind == "token":
            if e.node.index >= 0 and e.node.index != int(cache.tokens[e.node.pos]):
                raise CircuitsError(f"node {e.node.short()} is token {e.node.index} at position {e.node.pos}, but the "
                                    f"prompt has token {int(cache.tokens[e.node.pos])} there: the node is of another "
                                    "prompt")
            token_edits.append(e)
            continue
        if e.node.kind.endswith("_error"):
            if e.mode != "scale":
                raise CircuitsError(f"error node {e.node.short()}: only 'scale' edits are supported")
            if not 0 <= e.node.layer < rm.n_layers:
                raise CircuitsError(f"error node {e.node.short()}: layer {e.node.layer} is outside the model (0 to "
                                    f"{rm.n_layers - 1})")
            if e.node.kind == "mlp_error" and e.node.layer not in rm.transcoders:
                name = f"mlp_{e.node.layer}"
            else:
                name = dictionary_of(rm, e.node).cfg.name
            error_scale.setdefault(name, torch.ones(n, dtype=cache.logits.dtype))[e.node.pos] = e.value
            continue
        d = dictionary_of(rm, e.node)
        if not 0 <= e.node.index < d.d_sae:
            raise CircuitsError(f"node {e.node.short()}: feature {e.node.index} is outside {d.cfg.name} (0 to "
                                f"{d.d_sae - 1})")
        feature_edits.setdefault(d.cfg.name, []).append(e)
    pres: dict[str, Tensor] = {}
    codes_out: dict[str, Tensor] = {}
    hooks = []
    upstream = clt_upstream(list(rm.dictionaries))
    for d in rm.dictionaries:
        name = d.cfg.name
        captured: dict[str, Tensor] = {}

        def replace(act, hook, d=d, name=name, captured=captured):
            x = captured.pop("x") if "x" in captured else d.flatten_input(act)
            x = x[0].to(d.W_enc.dtype)
            pre = d.pre_activation(x)
            codes = cache.codes[name].clone() if direct else d.activation(pre)
            err = cache.errors[name].clone()
            if keep is not None:
                fmask, emask = keep[0][name], keep[1][name]
                codes = torch.where(fmask, codes, ablation.code(name, codes))
                err = torch.where(emask[:, None], err, ablation.error(name, err))
            if gates is not None and name in gates:
                fgate, egate = gates[name]
                a_code, a_err = ablation.code(name, codes), ablation.error(name, err)
                codes = a_code + fgate.to(codes.dtype) * (codes - a_code)
                err = a_err + egate[:, None].to(err.dtype) * (err - a_err)
            for e in feature_edits.get(name, []):
                old = codes[e.node.pos, e.node.index]
                new = {"set": e.value, "scale": old * e.value, "add": old + e.value}[e.mode]
                codes = codes.index_put((torch.tensor(e.node.pos), torch.tensor(e.node.index)),
                                        torch.as_tensor(new, dtype=codes.dtype))
            if name in error_scale:
                err = err * error_scale[name][:, None].to(err.dtype)
            if site_values is not None and name in site_values:
                codes, err = site_values[name]
            if grad_codes is not None:
                codes = codes.detach().requires_grad_(True) if direct else codes
                err = err.detach().requires_grad_(True)
                grad_codes[name] = (codes, err)
            pres[name] = pre.detach()
            codes_out[name] = codes.detach()
            out = reconstruct(d, codes, x, upstream) + err  # skip term live; a CLT layer sums earlier layers
            if outputs is not None:
                outputs[name] = out
            return d.unflatten_output(out.to(act.dtype))[None]

        if d.hook_in != d.hook_out:
            hooks.append((d.hook_in, lambda act, hook, d=d, captured=captured: captured.__setitem__(
                "x", d.flatten_input(act)) or act))
        hooks.append((d.hook_out, replace))
    for layer in range(rm.n_layers):
        if layer not in rm.transcoders:
            name = f"mlp_{layer}"
            if direct or name in error_scale:
                held = cache.error_writes[f"mlp_{layer}"]

                def mlp(act, hook, held=held, name=name, direct=direct):
                    base = held.to(act.dtype)[None] if direct else act
                    return base * error_scale[name][None, :, None].to(act.dtype) if name in error_scale else base
                hooks.append((hook_mlp_out(layer), mlp))
    if token_edits:
        write = cache.resid_pre[0].detach()  # the token node's write (embedding, + position embedding if any)

        def tokens_hook(act, hook):
            act = act.clone()
            for e in token_edits:
                factor = {"scale": e.value - 1.0, "add": e.value, "set": e.value - 1.0}[e.mode]
                act[:, e.node.pos] += factor * write[e.node.pos].to(act.dtype)
            return act
        hooks.append((hook_resid_pre(0), tokens_hook))
    ctx = rm.frozen(cache) if frozen else _nullcontext()
    with ctx, rm.model.hooks(fwd_hooks=hooks):
        logits = rm.model(cache.tokens[None])[0]
    return logits, pres, codes_out


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def intervene(rm: ReplacementModel, prompt: str | Tensor | ReplacementCache, edits: Iterable[Edit], *,
              frozen: bool = False, direct: bool = False, metric: Metric | None = None) -> InterventionResult:
    """Apply `edits` and report logits, pre-activations and codes after, and the metric before and after."""
    edits = [edits] if isinstance(edits, Edit) else list(edits)  # one edit may come alone
    if not all(isinstance(e, Edit) for e in edits):
        bad = next(e for e in edits if not isinstance(e, Edit))
        raise CircuitsError(f"intervene takes Edits, not a {type(bad).__name__}; e.g. Edit.zero(node) or "
                            "Edit(node, 'set', 2.0)")
    cache = prompt if isinstance(prompt, ReplacementCache) else rm.run(prompt)
    with torch.no_grad():
        logits, pres, codes = run_edited(rm, cache, edits, frozen=frozen, direct=direct)
    result = InterventionResult(logits, cache.logits, pres, codes)
    if metric is not None:
        result.metric, result.clean_metric = float(metric(logits)), float(metric(cache.logits))
    return result


@dataclass
class Faithfulness:
    ablation: str  # "zero" or "mean"
    circuit: float  # m(C)
    empty: float  # m(∅)
    full: float  # m(M)
    n_features: int  # features kept live (the circuit's, plus the BOS position's when the graph folded BOS)
    n_errors: int
    n_bos: int = 0  # of those features and errors, the BOS position's (folded into the graph's constants)
    convention: Convention = "standard"  # for mean ablation: are features inactive on the prompt ablated too?

    @property
    def score(self) -> float:
        denom = self.full - self.empty
        return (self.circuit - self.empty) / denom if denom != 0 else float("nan")

    @property
    def label(self) -> str:
        """The convention in words: ``standard mean ablation``, ``held-inactive mean ablation (variant)`` or
        ``zero ablation``."""
        if self.ablation == "zero":
            return "zero ablation"
        return "standard mean ablation" if self.convention == "standard" else "held-inactive mean ablation (variant)"


def hold_inactive(ablation: Ablation, cache: ReplacementCache) -> Ablation:
    """`ablation` for one prompt with features inactive on it held at their clean value, 0: graph nodes (active
    features, errors) take the ablation's values when ablated; features that are not graph nodes stay at 0 (so
    "everything ablated" changes exactly the graph's nodes)."""
    if ablation.mode == "zero":
        return ablation
    return Ablation("mean", {n: torch.where(cache.codes[n] != 0, m.to(cache.codes[n].dtype).expand_as(cache.codes[n]),
                                            0.0) for n, m in ablation.code_means.items()}, dict(ablation.error_means))


def circuit_masks(rm: ReplacementModel, cache: ReplacementCache, nodes: Iterable[Node]
                  ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Boolean masks of the features ([pos, d_sae]) and error nodes ([pos]) of each dictionary in `nodes`."""
    n = cache.n_pos
    fmask = {d.cfg.name: torch.zeros(n, d.d_sae, dtype=torch.bool) for d in rm.dictionaries}
    emask = {d.cfg.name: torch.zeros(n, dtype=torch.bool) for d in rm.dictionaries}
    for node in nodes:
        if node.kind.endswith(("_feature", "_error")) and not 0 <= node.pos < n:
            raise CircuitsError(f"circuit node {node.short()}: position {node.pos} is outside the prompt (0 to "
                                f"{n - 1}); is the circuit of another prompt?")
        if node.kind.endswith("_feature"):
            d = dictionary_of(rm, node)
            if not 0 <= node.index < d.d_sae:
                raise CircuitsError(f"circuit node {node.short()}: feature {node.index} is outside {d.cfg.name} (0 "
                                    f"to {d.d_sae - 1})")
            fmask[d.cfg.name][node.pos, node.index] = True
        elif node.kind.endswith("_error"):
            table = rm.attention_saes if node.kind == "attn_error" else rm.transcoders
            if node.layer in table:
                emask[table[node.layer].cfg.name][node.pos] = True
    return fmask, emask


def _masks_with_bos(rm: ReplacementModel, cache: ReplacementCache, circuit: Graph | Iterable[Node]):
    """`circuit_masks` of the circuit's nodes, plus every BOS node when the graph folded BOS into its constants;
    and how many BOS nodes that added."""
    nodes = list(circuit.nodes) if isinstance(circuit, Graph) else list(circuit)
    tokens = circuit.metadata.get("tokens") if isinstance(circuit, Graph) else None
    if tokens is not None and list(tokens) != cache.tokens.tolist():
        raise CircuitsError("the circuit's graph was attributed on another prompt (its tokens differ from this "
                            "prompt's); score it on the prompt it came from, or pass its nodes (list(graph.nodes)) to "
                            "test them on this prompt")
    masks = circuit_masks(rm, cache, nodes)
    bos = circuit.metadata.get("bos_folded") if isinstance(circuit, Graph) else None
    n_bos = 0
    if bos and bos.get("pos") is not None:  # BOS nodes folded into the graph's constants (graph.fold_bos) stay
        for d in rm.dictionaries:
            masks[0][d.cfg.name][bos["pos"]] |= cache.codes[d.cfg.name][bos["pos"]].cpu() != 0
            masks[1][d.cfg.name][bos["pos"]] = True
            n_bos += int(masks[0][d.cfg.name][bos["pos"]].sum()) + 1
    return masks, n_bos


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise CircuitsError(f"convention {convention!r} is not one of {', '.join(CONVENTIONS)}")


@torch.no_grad()
def faithfulness(rm: ReplacementModel, prompt: str | Tensor | ReplacementCache, circuit: Graph | Iterable[Node],
                 metric: Metric, ablation: Ablation | None = None,
                 convention: Convention = "standard") -> Faithfulness:
    """Ablation faithfulness of `circuit` (a pruned graph or a node list) on `metric`, live attention, under
    `ablation` (default zero) and, for mean ablation, `convention` (module docstring)."""
    _check_convention(convention)
    ablation = ablation or Ablation("zero")
    cache = prompt if isinstance(prompt, ReplacementCache) else rm.run(prompt)
    masks, n_bos = _masks_with_bos(rm, cache, circuit)
    return _score(rm, cache, masks, metric, ablation, convention, n_bos)


def _score(rm, cache, masks, metric, ablation: Ablation, convention: str, n_bos: int = 0) -> Faithfulness:
    # held-inactive: features that are not graph nodes stay at their clean value, 0
    used = hold_inactive(ablation, cache) if convention == "held-inactive" else ablation
    none = ({k: torch.zeros_like(v) for k, v in masks[0].items()}, {k: torch.zeros_like(v) for k, v in masks[1].items()})
    m_c = float(metric(run_edited(rm, cache, keep=masks, ablation=used)[0]))
    m_0 = float(metric(run_edited(rm, cache, keep=none, ablation=used)[0]))
    m_full = float(metric(cache.logits))
    return Faithfulness(ablation.mode, m_c, m_0, m_full, int(sum(int(v.sum()) for v in masks[0].values())),
                        int(sum(int(v.sum()) for v in masks[1].values())), n_bos, convention)


@dataclass
class RandomBaseline:
    """Faithfulness of random circuits like a given one: `scores` (one per draw); `n_features` random features per
    draw; `n_elsewhere` of them (per draw, at most) came from another position of the same dictionary because the
    circuit's position had too few other active features. `errors_only`: the faithfulness of the circuit's error
    nodes (and fixed nodes) with no feature at all — what every random circuit starts from."""

    scores: list[float]
    n_features: int
    n_elsewhere: int
    errors_only: float = float("nan")

    @property
    def mean(self) -> float:
        return float(sum(self.scores) / len(self.scores)) if self.scores else float("nan")


@torch.no_grad()
def random_baseline(rm: ReplacementModel, prompt: str | Tensor | ReplacementCache, circuit: Graph | Iterable[Node],
                    metric: Metric, ablation: Ablation | None = None, convention: Convention = "standard",
                    draws: int = 5, seed: int = 0, fixed: Iterable[Node] = ()) -> RandomBaseline:
    """The faithfulness of `draws` random circuits shaped like `circuit`: each keeps the circuit's error nodes, the
    `fixed` nodes (e.g. BOS nodes folded into a graph's constants; a graph that folded BOS keeps its BOS nodes by
    itself) and, for the circuit's other features, as many features drawn uniformly from the features active on the
    prompt that are not in the circuit, of the same dictionary at the same position (from other positions of that
    dictionary when too few are left there). Seeded, so reproducible."""
    import random

    _check_convention(convention)
    if draws < 1:
        raise CircuitsError(f"draws must be at least 1, got {draws}")
    ablation = ablation or Ablation("zero")
    cache = prompt if isinstance(prompt, ReplacementCache) else rm.run(prompt)
    masks, _ = _masks_with_bos(rm, cache, circuit)
    fixed_f, fixed_e = circuit_masks(rm, cache, list(fixed))
    masks = ({k: v | fixed_f[k] for k, v in masks[0].items()}, {k: v | fixed_e[k] for k, v in masks[1].items()})
    fixed = fixed_f  # these features stay as they are in every draw
    bos = circuit.metadata.get("bos_folded") if isinstance(circuit, Graph) else None
    if bos and bos.get("pos") is not None:  # the folded BOS position's features, likewise
        for k in fixed:
            fixed[k][bos["pos"]] |= masks[0][k][bos["pos"]]
    rng = random.Random(seed)
    scores, n_elsewhere, n_features = [], 0, 0
    for _ in range(draws):
        fmask, moved = {}, 0
        for name, m in masks[0].items():
            chosen = m & fixed[name]
            active = cache.codes[name].cpu() != 0
            free = active & ~m
            want = m & ~fixed[name]
            short = 0
            for pos in range(m.shape[0]):
                k = int(want[pos].sum())
                if not k:
                    continue
                pool = free[pos].nonzero().flatten().tolist()
                take = rng.sample(pool, min(k, len(pool)))
                chosen[pos, take] = True
                free[pos, take] = False
                short += k - len(take)
            if short:  # too few left at those positions: the same dictionary elsewhere
                pool = free.nonzero().tolist()
                for pos, idx in rng.sample(pool, min(short, len(pool))):
                    chosen[pos, idx] = True
                moved += short
            fmask[name] = chosen
        n_elsewhere = max(n_elsewhere, moved)
        n_features = int(sum(int((fmask[k] & ~fixed[k]).sum()) for k in fmask))
        scores.append(_score(rm, cache, (fmask, masks[1]), metric, ablation, convention).score)
    bare = {k: fixed[k].clone() for k in masks[0]}  # no feature beyond the fixed ones; the same error nodes
    errors_only = _score(rm, cache, (bare, masks[1]), metric, ablation, convention).score
    return RandomBaseline(scores, n_features, n_elsewhere, errors_only)


def faithfulness_with_baselines(rm: ReplacementModel, prompt: str | Tensor | ReplacementCache, circuit: Graph,
                                metric: Metric, fixed: Iterable[Node] = (), draws: int = 5
                                ) -> list[tuple[Faithfulness, RandomBaseline]]:
    """What `circuits trace` and the explorer report for one prompt: the circuit's faithfulness under standard mean
    ablation and its held-inactive variant (the organism: `standard_ablations` has corpus means), and zero ablation,
    each with its `random_baseline` (`draws` draws, seed 0). `fixed` nodes (BOS nodes folded into constants) are
    kept with the circuit and with every random one."""
    cache = prompt if isinstance(prompt, ReplacementCache) else rm.run(prompt)
    fixed = list(fixed)
    ablations = standard_ablations(rm)
    runs = [(a, c) for a in ablations if a.mode == "mean" for c in CONVENTIONS]
    runs += [(a, "standard") for a in ablations if a.mode == "zero"]
    return [(faithfulness(rm, cache, [*circuit.nodes, *fixed] if fixed else circuit, metric, ablation, convention),
             random_baseline(rm, cache, circuit, metric, ablation, convention, draws=draws, seed=0, fixed=fixed))
            for ablation, convention in runs]


__all__ = ["Ablation", "CONVENTIONS", "Edit", "Faithfulness", "InterventionResult", "RandomBaseline", "faithfulness",
           "faithfulness_with_baselines", "intervene", "random_baseline",
           "dictionary_of", "graph_metric", "hold_inactive", "logit_diff_metric", "mean_ablation", "run_edited", "standard_ablations"]
