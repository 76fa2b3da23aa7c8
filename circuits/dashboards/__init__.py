"""Feature dashboards: what each feature does, computed over held-out text and stored in SQLite.

For every feature of every dictionary in a set, two streaming passes over held-out token rows collect:

1. **Pass 1** (codes of all dictionaries, one batch at a time): activation density (fraction of tokens where the
   feature is on), a histogram of its non-zero activations (log-spaced bins), the top activating (row, position)
   pairs, and a uniform random sample of activating positions (random keys, kept by top-k: a reservoir sample in one
   pass), from which five samples at the 10/30/50/70/90% activation quantiles are shown.
2. **Pass 2** (only the rows those examples live in): each example's context window with the feature's activation
   on every token, and for attention-SAE features the decomposition of each top activation by head and by source
   position (``A[h, p, q] · v[q, h] · W_enc[h, :, i]`` — the same terms as the graph's per-head edges).

**Logit effects** (`logit_effect_matrix`): a feature's direct effect on each token's logit per unit activation, as the
graph's feature → logit edge reads it with every frozen norm scale σ set to 1 (a σ is one positive number per
position: it rescales a feature's effects but never reorders its tokens). The write direction is ``W_dec[i]`` for a
transcoder (a cross-layer transcoder's decoders summed: its total direct write; Gemma-2's ``ln2_post`` needs nothing,
a transcoder predicts ``hook_mlp_out`` after it) and ``W_dec[i] W_O`` for an attention-SAE feature, times Gemma-2's
``ln1_post`` weight (the norm after attention). The final norm reads it as the model family does
(`ReplacementModel.center`): LayerNorm centres it then scales by γ, RMSNorm (Gemma-2, Llama-3, Qwen3) only scales by
its weight; then the unembedding. Gemma-2's final soft-cap is monotone and not applied (the effect is on the logit
before the cap, as graph targets are). The top and bottom tokens are stored.

**Labels.** The label shown everywhere is, first found: the user's label (`set_label`, kept in a JSON file beside the
database, `user_labels_path`, never in it); the enrichment label
(:mod:`circuits.labels`: the token set the feature's top tokens, the tokens before them and its logit effects are
enriched in — ``"name → promotes names"``), computed at the end of every build over named token sets
(:mod:`circuits.token_sets`); the *peak-token label* (`auto_label`, always kept as a second field): the token on
which the feature most often peaks in its top contexts, with the share of top contexts where it does, and the token
it promotes most — ``"on ' Mary' (9/10) → ' John'"``. Features with no activation are labelled ``"dead"``.
Other code reads labels only through `Dashboards.label` / `Dashboards.labels` (text) and
`Dashboards.label_category` / `Dashboards.label_categories` (the category, for grouping).

Layout (plain SQL; every JSON column is a JSON text):

    meta(key TEXT PRIMARY KEY, value TEXT)                      -- fingerprint, model, rows, seed, ...
    features(dictionary TEXT, feature INTEGER, density REAL, max_activation REAL, n_active INTEGER,
             histogram TEXT, logits_top TEXT, logits_bottom TEXT, heads TEXT, source_offsets TEXT,
             auto_label TEXT, user_label TEXT, PRIMARY KEY (dictionary, feature))
             -- source_offsets: the 8 largest shares by (query − source) distance, the rest as "other"
    examples(dictionary TEXT, feature INTEGER, kind TEXT ('top' | 'quantile'), rank INTEGER, activation REAL,
             row INTEGER, pos INTEGER, tokens TEXT, activations TEXT, PRIMARY KEY (dictionary, feature, kind, rank))
    done(dictionary TEXT PRIMARY KEY)                           -- dictionaries finished (the build resumes)
    labels(...), token_sets(...)                                -- enrichment labels: see circuits.labels

The fingerprint (a hash of every dictionary tensor and the model's weights) is stored in ``meta``; opening a
database built for different dictionaries is refused with the build command.
"""

from circuits.dashboards.build import build, head_source_terms, pending, relabel
from circuits.dashboards.logit_effects import (
    N_LOGITS,
    logit_directions,
    logit_effect_matrix,
    logit_effects,
    write_directions,
)
from circuits.dashboards.store import (
    WINDOW_AFTER,
    WINDOW_BEFORE,
    Dashboard,
    DashboardError,
    Dashboards,
    Example,
    activations_on,
    feature_id,
    fingerprint,
    parse_feature_id,
    render_text,
)
from circuits.dashboards.user_labels import set_label, user_labels_path

__all__ = ["N_LOGITS", "WINDOW_AFTER", "WINDOW_BEFORE", "Dashboard", "DashboardError", "Dashboards", "Example",
           "activations_on", "build", "pending", "feature_id", "fingerprint", "head_source_terms", "logit_directions",
           "logit_effect_matrix", "logit_effects", "parse_feature_id", "relabel", "render_text", "set_label",
           "user_labels_path", "write_directions"]
