"""CheXpert: multi-label classification of 14 observations on chest radiographs (Irvin et al. 2019).

Layout (``--data``): CheXpert's CSV (``train.csv``, ``valid.csv``) with the columns ``Path``, ``Sex``,
``Age``, ``Frontal/Lateral``, ``AP/PA`` and the 14 observations, each ``1.0`` (positive), ``0.0``
(negative), ``-1.0`` (uncertain) or blank (not mentioned in the report, taken as negative as in
Irvin et al.). ``--data`` is that CSV, or the folder holding it. ``Path`` is resolved against the
CSV's folder, its parent (the release's ``CheXpert-v1.0-small/train/...`` paths sit next to the
CSVs' folder) or the CSV's folder without the first path component; the first that exists wins.

Splits: a folder with ``train.csv`` and ``valid.csv`` gives ``valid.csv`` (the radiologist-labelled
set) as the test split and divides ``train.csv`` by patient into train/validation (85/15); a single
CSV is divided by patient into train/validation/test (70/15/15). Patients never cross splits.

Uncertain labels (``--uncertain``, Irvin et al.'s policies): ``ignore`` (U-Ignore: masked out of the
loss and of the AUC), ``ones`` (U-Ones: positive), ``zeros`` (U-Zeros: negative). Metrics: the AUC of
each observation and ``mean_auc_competition``, the mean over the five competition observations
(Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion; headline and validation
metric), and ``mean_auc_all`` (every observation with a defined AUC). ``--study-max`` scores a
study by the maximum over its views (Irvin et al.); by default every radiograph is a unit
(Awatramani et al.). Images are read with :func:`genesis.io.radiograph.load_radiograph`, resized
to the crop's square side (224 by default: ``--crop 1 320 320`` for 320), cached as float16.

Without ``--data``: synthetic radiographs (:mod:`genesis.data.synthetic.radiograph`), where only
``Pleural Effusion``, ``Consolidation``, ``Lung Lesion`` and ``No Finding`` vary; the other AUCs are
undefined (reported as n/a) and outputs are marked synthetic.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from finetune.data import ClsSample, TargetData, assign_splits
from finetune.multilabel import masked_bce, metric_key, score_units, statistic
from finetune.targets.base import Target, register_target
from finetune.targets._common import cached_array
from genesis.data.synthetic.radiograph import CHEXPERT_OBSERVATIONS, SYNTHETIC_CXR_NOTE
from genesis.errors import ConfigError, DatasetLayoutError, GenesisError

if TYPE_CHECKING:
    from finetune.config import FinetuneConfig

COMPETITION = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
UNCERTAIN_POLICIES = {"ignore": np.nan, "ones": 1.0, "zeros": 0.0}
METADATA_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
#: synthetic radiographs per configured synthetic case: multi-label AUCs need more units
SYNTHETIC_MULTIPLIER = 4


def parse_label(text: str, uncertain: str) -> float:
    """A CheXpert cell -> 1, 0 or nan (ignored). Blank = not mentioned = negative."""
    text = (text or "").strip()
    if text == "":
        return 0.0
    value = float(text)
    if value == -1.0:
        return UNCERTAIN_POLICIES[uncertain]
    if value not in (0.0, 1.0):
        raise ValueError(f"label {text!r} is not 1, 0, -1 or blank")
    return value


def read_chexpert_csv(path: Path) -> tuple[list[dict[str, str]], Callable[[str], Path]]:
    """Rows of a CheXpert CSV and the function that finds the image of a ``Path`` entry.

    Raises:
        DatasetLayoutError: missing columns, no rows, or image files that cannot be found.
    """
    from genesis.data.radiographs import read_image_table

    return read_image_table(path, ("Path", *CHEXPERT_OBSERVATIONS))


def patient_and_study(rel: str) -> tuple[str, str]:
    """``.../patient00001/study1/view1_frontal.jpg`` -> (``patient00001``, ``patient00001/study1``)."""
    parts = Path(rel).parts
    patient = next((p for p in parts if p.startswith("patient")), parts[-3] if len(parts) >= 3 else rel)
    study = "/".join(parts[-3:-1]) if len(parts) >= 3 else rel
    return patient, study


@register_target("chexpert")
class CheXpert(Target):
    name = "chexpert"
    title = "chest radiograph observations, multi-label (CheXpert)"
    task = "classification"
    multilabel = True
    observations = CHEXPERT_OBSERVATIONS
    label_sets = {"competition": COMPETITION, "all": CHEXPERT_OBSERVATIONS}
    metrics = ("mean_auc_competition", "mean_auc_all", *(metric_key(o) for o in CHEXPERT_OBSERVATIONS))
    primary_metric = "mean_auc_competition"
    val_metric = "mean_auc_competition"
    default_crop = (1, 224, 224)
    quick_crop = (1, 64, 64)
    default_model = "densenet121"
    real_layout = "CheXpert CSV (Path, Sex, Age, Frontal/Lateral, AP/PA, 14 observations) or its folder"

    @property
    def num_outputs(self) -> int:
        return len(self.observations)

    def image_size(self, cfg: "FinetuneConfig") -> int:
        d, h, w = self.crop(cfg)
        if d != 1 or h != w:
            raise ConfigError(f"chexpert reads square 2D radiographs: --crop must be 1 S S, got {(d, h, w)}")
        return int(h)

    def loss(self, logits: Any, targets: Any) -> Any:
        return masked_bce(logits, targets)

    def score_units(self, samples: list, probs: np.ndarray, cfg: "FinetuneConfig") -> dict[str, Any]:
        values = score_units(samples, probs, self.observations, aggregate=bool(getattr(cfg, "study_max", False)))
        values["sets"] = {k: list(v) for k, v in self.label_sets.items()}
        return values

    @staticmethod
    def statistic(values: dict[str, Any], metric: str):
        return statistic(values, metric, values.get("sets", {}))

    # ------------------------------------------------------------------------------ data
    def _policy(self, cfg: "FinetuneConfig") -> str:
        policy = getattr(cfg, "uncertain", "ignore")
        if policy not in UNCERTAIN_POLICIES:
            raise ConfigError(f"--uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}, got {policy!r}")
        return policy

    def _samples(self, csv_path: Path, cfg: "FinetuneConfig") -> list[tuple[ClsSample, str]]:
        """(sample, patient) for every row of a CheXpert CSV, images cached under OUT/cache."""
        from genesis.io.radiograph import load_radiograph

        policy, size = self._policy(cfg), self.image_size(cfg)
        rows, resolve_image = read_chexpert_csv(csv_path)
        labels = []
        for k, row in enumerate(rows):
            try:
                labels.append([parse_label(row[o], policy) for o in self.observations])
            except ValueError as exc:
                raise DatasetLayoutError(f"row {k + 2}: {exc}", csv_path) from None

        def compute() -> tuple[np.ndarray, dict]:
            images = np.empty((len(rows), 1, size, size), dtype=np.float16)
            for k, row in enumerate(rows):
                try:
                    images[k, 0] = load_radiograph(resolve_image(row["Path"]), size=size).array
                except GenesisError as exc:
                    raise DatasetLayoutError(f"row {k + 2}: {exc}", csv_path) from None
            return images, {"n": len(rows)}

        images, _ = cached_array(cfg, "chexpert", csv_path, (size, "pad", len(rows)), compute)
        out = []
        for k, row in enumerate(rows):
            patient, study = patient_and_study(row["Path"])
            out.append((ClsSample(images[k], np.asarray(labels[k], dtype=np.float32), study, row["Path"]), patient))
        return out

    def load_real(self, root: Path, cfg: "FinetuneConfig") -> TargetData:
        splits: dict[str, list] = {"train": [], "val": [], "test": []}
        if root.is_dir():
            train_csv, valid_csv = root / "train.csv", root / "valid.csv"
            if not train_csv.is_file():
                raise DatasetLayoutError("no train.csv (CheXpert layout)", root)
        else:
            train_csv, valid_csv = root, None
        rows = self._samples(train_csv, cfg)
        has_test = valid_csv is not None and valid_csv.is_file()
        fractions = (0.85, 0.15) if has_test else (0.7, 0.15)
        split = assign_splits([p for _, p in rows], fractions)
        for sample, patient in rows:
            splits[split[patient]].append(sample)
        if has_test:
            splits["test"] = [s for s, _ in self._samples(valid_csv, cfg)]
        self._check(splits, root)
        return TargetData(**splits, synthetic=False, source=f"CheXpert CSV {train_csv}"
                          + (f" (test: {valid_csv})" if has_test else " (patient split 70/15/15)"))

    def load_synthetic(self, cfg: "FinetuneConfig") -> TargetData:
        from genesis.data.synthetic.radiograph import generate_radiograph

        policy, size = self._policy(cfg), self.image_size(cfg)
        s = cfg.synthetic
        splits: dict[str, list] = {"train": [], "val": [], "test": []}
        offsets = {"train": 0, "val": 100_000, "test": 200_000}
        for split, n in (("train", s.n_train), ("val", s.n_val), ("test", s.n_test)):
            for i in range(n * SYNTHETIC_MULTIPLIER):
                r = generate_radiograph(s.seed + offsets[split] + i, size=size)
                cells = ["" if r.labels[o] is None else str(r.labels[o]) for o in self.observations]
                label = np.asarray([parse_label(c, policy) for c in cells], dtype=np.float32)
                name = f"synthetic-{split}-{i}"
                splits[split].append(ClsSample(r.image[None].astype(np.float32), label, name, name))
        self._check(splits, Path("synthetic"))
        return TargetData(**splits, synthetic=True, source=SYNTHETIC_CXR_NOTE)

    def _check(self, splits: dict[str, list], where: Path) -> None:
        train = splits["train"]
        if not train:
            return
        labels = np.stack([s.label for s in train])
        both = [o for j, o in enumerate(self.observations)
                if np.any(labels[:, j] == 1) and np.any(labels[:, j] == 0)]
        if not both:
            raise DatasetLayoutError("the training split has no observation with both positive and negative "
                                     "labels; nothing to learn", where)
