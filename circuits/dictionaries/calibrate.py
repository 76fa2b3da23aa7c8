"""Re-calibrate the inference thresholds of a set to a chosen mean L0.

A BatchTopK dictionary keeps the k largest pre-activations of a whole batch while it trains; at inference it is a
JumpReLU whose threshold θ (one scalar) is the level that batch selection cut at (Bussmann et al. 2024). Nothing
ties inference to the training k: lowering θ lets more features through, so L0 rises and the reconstruction
error usually falls, and the decoders already point where those features write. `calibrate_set` spends an L0
budget that way: every threshold of a dictionary is shifted by one common δ (`finetune.shift_thresholds`) so that
its mean L0 over clean inputs is `target_l0`.

Rows: the fine-tune's corpus stream (`FinetuneConfig.corpus_seed` = 2, phases 3 and 5 block by block), from block
``first_block`` on, far past the rows a fine-tune of up to ``first_block`` steps reads, and never the rows
`dicts eval` scores (corpus seed 0, stream "heldout-dicts"). Encoders and decoders are untouched; a feature that
fired still fires, with the same value (a JumpReLU passes its pre-activation through).
"""

from __future__ import annotations

import dataclasses

import torch

from circuits.dictionaries.dictset import DictionarySet
from circuits.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class CalibrateConfig:
    target_l0: float = 31.0  # mean active features per token, for every dictionary that has a threshold
    rows: int = 128  # corpus rows (of the model's n_ctx tokens) the L0 is measured on
    first_block: int = 10_000  # first block (of 16 rows) of the fine-tune's stream that is read

    def check(self) -> None:
        """Raise `ConfigError` (one line) before any model or data is touched."""
        if not (isinstance(self.target_l0, (int, float)) and 0 < self.target_l0 < float("inf")):
            raise ConfigError(f"calibration: target L0 {self.target_l0}: must be a finite number > 0")
        if not (isinstance(self.rows, int) and self.rows >= 1):
            raise ConfigError(f"calibration: rows {self.rows}: must be at least 1")


@torch.no_grad()
def calibrate_set(model, dset: DictionarySet, cfg: CalibrateConfig = CalibrateConfig()) -> dict[str, dict]:
    """Shift each thresholded dictionary of `dset` (in place) to mean L0 `cfg.target_l0` on clean inputs.

    Returns {name: {"l0_before", "l0_after", "delta"}}; a dictionary without a threshold (TopK, ReLU) is left
    as it is and reported with delta None. Raises `ConfigError` when a dictionary cannot reach the target: more
    features per token than it has, or more than have a positive pre-activation (a threshold stays ≥ 0, so codes
    stay positive); the set is then left shifted, so do not save it."""
    from circuits.dictionaries.finetune import FinetuneConfig, RowStream, clean_inputs, mean_l0, shift_thresholds

    cfg.check()
    stream = RowStream(model, FinetuneConfig(rows=16))
    blocks = [stream.block(cfg.first_block + i) for i in range(-(-cfg.rows // 16))]
    inputs = [clean_inputs(model, dset, b) for b in blocks]
    before = mean_l0(dset, inputs)
    report = {}
    for d in dset:
        name = d.cfg.name
        delta = shift_thresholds(d, [b[name] for b in inputs], cfg.target_l0)
        if delta is None and hasattr(d.activation, "threshold"):
            raise ConfigError(f"calibration: {name} cannot reach L0 {cfg.target_l0} (it has fewer features); "
                              "choose a smaller target")
        report[name] = {"l0_before": before[name], "delta": delta}
    after = mean_l0(dset, inputs)
    for name in report:
        report[name]["l0_after"] = after[name]
        if report[name]["delta"] is not None and after[name] < 0.95 * cfg.target_l0:
            raise ConfigError(f"calibration: {name} reaches only L0 {after[name]:.1f} of {cfg.target_l0} (too few "
                              "features with a positive pre-activation); choose a smaller target")
    return report
