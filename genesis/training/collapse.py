"""Collapse detection for restoration pretraining: a flat grey cube is not a trained model.

The methods measure trivial predictors on the validation pairs, on the voxels the loss is computed
on (:mod:`genesis.methods.baselines`: do nothing, each cube's mean, and for masked tasks the mask
filled with the mean of the visible voxels). :func:`margins` compares the model with each of them
per validation cube, averages the relative improvement per *patient* (validation scans are held
out by patient, so cubes of one scan are not independent) and gives its standard error over
patients. :func:`collapse_note` flags an epoch only when the model is clearly no better than a
baseline: the upper end of the 95% interval of its improvement is below :data:`MIN_IMPROVEMENT`;
an estimate too uncertain to tell is not flagged (a collapse check that cries wolf on 3 patients
and 26 patches is worse than none). :func:`final_warning` is the message printed at the end.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from genesis.methods.baselines import baseline_sums  # noqa: F401  (re-exported for callers and tests)

#: An output whose spread is below this fraction of the target's is "nearly constant".
FLAT_OUTPUT_RATIO = 0.1
#: The validation MSE must be below this fraction of a baseline's to count as beating it
#: (the rule for records without per-cube margins).
BEAT_MARGIN = 0.98
#: The model must beat a baseline by at least this relative margin (2%) to count as better.
MIN_IMPROVEMENT = 0.02
#: Two-sided 95% normal quantile.
Z95 = 1.959963984540054
#: Epochs before baselines are judged (a network starts at about the mean predictor).
GRACE_EPOCHS = 2
#: Held-out patients below which the check is reported as weak.
FEW_PATIENTS = 3
LIKELY_CAUSES = ("likely causes: a learning rate too high or too low (--lr), intensities outside the window "
                 "(check the HU range in data.csv and data.window), or too little data / too few epochs")
_NAMES = {"mean": "predicting each cube's mean", "identity": "returning the input unchanged",
          "fill": "filling the hidden voxels with the mean of the visible ones",
          "patch_mean": "predicting each masked patch's own mean"}


def margins(errors: Mapping[str, Sequence[float]], groups: Sequence[str]) -> dict[str, float]:
    """Relative improvement of the model over each baseline, per patient, and its standard error.

    Args:
        errors: per-cube MSEs: ``model`` and one array per baseline (``mean``, ``identity``, ``fill``).
        groups: the patient of each cube.
    Returns:
        ``val_<b>_margin`` (mean over patients of ``1 - model / baseline`` computed on each
        patient's cubes), ``val_<b>_margin_se`` (standard error over patients; over cubes with a
        single patient) and ``val_patients``.
    """
    model = np.asarray(errors.get("model", ()), dtype=np.float64)
    out: dict[str, float] = {}
    if model.size == 0:
        return out
    groups = np.asarray(list(groups)) if len(groups) == model.size else np.zeros(model.size, dtype=int)
    names = list(dict.fromkeys(groups.tolist()))
    out["val_patients"] = float(len(names))
    for key, values in errors.items():
        if key == "model":
            continue
        base = np.asarray(values, dtype=np.float64)
        if base.size != model.size:
            continue
        if len(names) >= 2:
            per = []
            for g in names:
                sel = groups == g
                b = base[sel].sum()
                per.append(1.0 - model[sel].sum() / b if b > 0 else 0.0)
            per_a = np.asarray(per)
            se = float(per_a.std(ddof=1) / math.sqrt(per_a.size))
            mean = float(per_a.mean())
        else:  # one patient: the spread over its cubes is all there is (the log says the check is weak)
            b = base.sum()
            mean = float(1.0 - model.sum() / b) if b > 0 else 0.0
            rel = 1.0 - model / np.where(base > 0, base, np.inf)
            se = float(rel.std(ddof=1) / math.sqrt(rel.size)) if rel.size > 1 else float("inf")
        out[f"val_{key}_margin"] = mean
        out[f"val_{key}_margin_se"] = se
    return out


def collapse_note(record: Mapping[str, Any], grace: int = GRACE_EPOCHS) -> str:
    """A short warning when this epoch's restoration looks collapsed, else ``""``.

    Flat output is flagged from the first epoch; losing to the baselines after ``grace`` epochs,
    judged on the per-patient margins when the record has them (the old fraction rule otherwise).
    """
    notes = []
    out_std, tgt_std = record.get("val_output_std"), record.get("val_target_std")
    if out_std is not None and tgt_std and tgt_std > 1e-4 and out_std < FLAT_OUTPUT_RATIO * tgt_std:
        notes.append(f"output nearly constant (spread {out_std:.3g} vs target {tgt_std:.3g})")
    mse, epoch = record.get("val_mse"), int(record.get("epoch", 0))
    if epoch <= grace:
        return "; ".join(notes)
    judged = False
    for key, words in _NAMES.items():
        margin, se = record.get(f"val_{key}_margin"), record.get(f"val_{key}_margin_se")
        if margin is None or se is None:
            continue
        judged = True
        if margin + Z95 * se < MIN_IMPROVEMENT:
            patients = int(record.get("val_patients", 0) or 0)
            notes.append(f"no better than {words} (improvement {margin:+.1%} +- {Z95 * se:.1%}, 95% over "
                         f"{patients} held-out patient{'s' if patients != 1 else ''}; needs > {MIN_IMPROVEMENT:.0%})")
    if not judged and mse is not None:
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
