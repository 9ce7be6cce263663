"""Collapse detection for restoration pretraining: a flat grey cube is not a trained model.

Two trivial predictors give every validation pair a floor the network must beat:

* *do nothing*: return the (transformed) input as the restoration;
* *predict the mean*: return each target cube's own mean intensity everywhere (the best constant
  per cube, which is what a collapsed network outputs at best).

:func:`baseline_sums` measures both on the validation pairs (same region as ``val_mse``) and the
spread of the network's output; :func:`collapse_note` turns an epoch's record into a plain warning
(logged in ``log.csv``'s ``collapse`` column) and :func:`final_warning` into the message printed
at the end of a run.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

#: An output whose spread is below this fraction of the target's is "nearly constant".
FLAT_OUTPUT_RATIO = 0.1
#: The validation MSE must be below this fraction of a baseline's to count as beating it.
BEAT_MARGIN = 0.98
#: Epochs before baselines are judged (a network starts at about the mean predictor).
GRACE_EPOCHS = 2
LIKELY_CAUSES = ("likely causes: a learning rate too high or too low (--lr), intensities outside the window "
                 "(check the HU range in data.csv and data.window), or too little data / too few epochs")


def _region_mean(err: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return err.flatten(1).mean(1)
    m = mask.expand_as(err).float()
    return (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)


def baseline_sums(restored: torch.Tensor, pair: Any, region: str) -> dict[str, float]:
    """Per-sample sums of the baseline MSEs and of the output/target spread on a validation batch.

    Args:
        restored: the network's restoration (``sigmoid(logits)``), shaped like ``pair.target``.
        pair: the proxy pair (``input``, ``target``, optional ``mask``).
        region: ``"mask"`` to measure on ``pair.mask`` only (as ``val_mse`` does), else everywhere.
    Returns:
        ``val_identity_mse`` (when the input is comparable to the target), ``val_mean_mse``,
        ``val_output_std`` and ``val_target_std``, each summed over the batch's samples.
    """
    target = pair.target.float()
    mask = pair.mask if region == "mask" and pair.mask is not None else None
    dims = tuple(range(1, target.dim()))
    out: dict[str, float] = {}
    mean = target.mean(dim=dims, keepdim=True)
    out["val_mean_mse"] = float(_region_mean((target - mean) ** 2, mask).sum())
    x = pair.input.float()
    if x.shape[2:] == target.shape[2:] and x.shape[1] >= target.shape[1]:
        x = x[:, -target.shape[1]:]  # the newest slices of a slab input
        out["val_identity_mse"] = float(_region_mean((x - target) ** 2, mask).sum())
    out["val_output_std"] = float(restored.float().flatten(1).std(1).sum())
    out["val_target_std"] = float(target.flatten(1).std(1).sum())
    return out


def collapse_note(record: Mapping[str, Any], grace: int = GRACE_EPOCHS) -> str:
    """A short warning when this epoch's restoration looks collapsed, else ``""``.

    Flat output is flagged from the first epoch; losing to the baselines after ``grace`` epochs.
    """
    notes = []
    out_std, tgt_std = record.get("val_output_std"), record.get("val_target_std")
    if out_std is not None and tgt_std and tgt_std > 1e-4 and out_std < FLAT_OUTPUT_RATIO * tgt_std:
        notes.append(f"output nearly constant (spread {out_std:.3g} vs target {tgt_std:.3g})")
    mse, epoch = record.get("val_mse"), int(record.get("epoch", 0))
    if mse is not None and epoch > grace:
        mean_mse, ident = record.get("val_mean_mse"), record.get("val_identity_mse")
        if mean_mse is not None and mse >= BEAT_MARGIN * mean_mse:
            notes.append(f"no better than predicting each cube's mean (val_mse {mse:.4g} vs {mean_mse:.4g})")
        if ident is not None and mse >= BEAT_MARGIN * ident:
            notes.append(f"no better than returning the input unchanged (val_mse {mse:.4g} vs {ident:.4g})")
    return "; ".join(notes)


def final_warning(history: Sequence[Mapping[str, Any]], grace: int = GRACE_EPOCHS) -> str:
    """The end-of-run message for the last epoch's record, or ``""`` when it looks trained."""
    if not history:
        return ""
    last = history[-1]
    note = collapse_note(last, grace=min(grace, max(int(last.get("epoch", 0)) - 1, 0)))
    if not note:
        return ""
    few = f" after only {last.get('epoch')} epochs" if int(last.get("epoch", 0)) <= grace + 1 else ""
    stage = f" (stage {last['stage']})" if last.get("stage") else ""
    return f"warning: the restoration may have collapsed{few}{stage}: {note}. {LIKELY_CAUSES}."
