"""Honest fine-tuning statistics: the patient is the unit of every interval, draw and comparison."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _owndata import patches_h5  # noqa: E402

from finetune import run_finetune  # noqa: E402
from finetune.config import FinetuneConfig  # noqa: E402
from finetune.data import SegCase, draw_subsets  # noqa: E402
from finetune.stats import (  # noqa: E402
    Clusters,
    bootstrap_ci,
    holm,
    joint_bootstrap_ci,
    n_units,
    paired_bootstrap,
    sample_statistic,
    unit_statistic,
)
from genesis.errors import ConfigError, DatasetLayoutError  # noqa: E402


def grouped_values(seed: int = 0, n_patients: int = 10, per_patient: int = 8) -> tuple[dict, dict[str, np.ndarray]]:
    """Per-case Dice of patients that differ (patient effect s.d. 0.2, within-patient s.d. 0.02)."""
    rng = np.random.default_rng(seed)
    by_patient = {f"p{k}": np.clip(rng.normal(0.5, 0.2) + rng.normal(0, 0.02, per_patient), 0, 1)
                  for k in range(n_patients)}
    pairs = [(g, i) for g in by_patient for i in range(per_patient)]
    pairs = [pairs[j] for j in rng.permutation(len(pairs))]  # samples of a patient are not contiguous
    values = {"names": [f"{g}/{i}" for g, i in pairs], "groups": [g for g, _ in pairs],
              "foreground": [True] * len(pairs), "dice": [float(by_patient[g][i]) for g, i in pairs]}
    return values, by_patient


def test_patient_ci_is_wider_than_sample_ci_and_equals_a_direct_patient_bootstrap():
    values, by_patient = grouped_values()
    assert n_units(values) == 10
    patients = bootstrap_ci(unit_statistic("segmentation", values, "dice"), n_units(values), seed=3)
    samples = bootstrap_ci(sample_statistic("segmentation", values, "dice"), len(values["names"]), seed=3)
    assert patients["high"] - patients["low"] > 2 * (samples["high"] - samples["low"])
    # the same interval computed directly: resample patients, pool their cases, average
    names = sorted(by_patient)
    draws = np.random.default_rng(3).integers(0, len(names), (1000, len(names)))
    means = [np.concatenate([by_patient[names[k]] for k in draw]).mean() for draw in draws]
    low, high = np.quantile(means, [0.025, 0.975])
    assert patients["low"] == pytest.approx(low, abs=1e-12) and patients["high"] == pytest.approx(high, abs=1e-12)


def test_clusters_expand_units_to_their_samples_with_repeats():
    c = Clusters.of(["b", "a", "b", "c", "a"])
    assert c.names == ("a", "b", "c") and c.n == 3
    assert c.samples(np.array([1, 1, 2])).tolist() == [0, 2, 0, 2, 3]


def test_headline_is_over_cases_with_foreground_and_the_all_cases_mean_is_kept():
    values = {"names": ["a", "b", "c"], "groups": ["a", "b", "c"], "foreground": [True, False, True],
              "dice": [0.4, 1.0, 0.6]}
    idx = np.arange(3)
    assert sample_statistic("segmentation", values, "dice")(idx) == pytest.approx(0.5)
    assert sample_statistic("segmentation", values, "dice", all_cases=True)(idx) == pytest.approx(2.0 / 3.0)
    assert np.isnan(sample_statistic("segmentation", values, "dice")(np.array([1, 1])))


def test_joint_bootstrap_resamples_runs_and_patients_together():
    values, _ = grouped_values(seed=1)
    shifted = dict(values, dice=[min(1.0, v + 0.3) for v in values["dice"]])
    fns = [unit_statistic("segmentation", v, "dice") for v in (values, shifted)]
    n = n_units(values)
    fixed = joint_bootstrap_ci(fns, n, resample_runs=False, seed=5)
    joint = joint_bootstrap_ci(fns, n, resample_runs=True, seed=5)
    assert joint["high"] - joint["low"] > fixed["high"] - fixed["low"]  # the runs differ: wider
    # runs fixed: exactly the patient bootstrap of the run-averaged metric
    alone = bootstrap_ci(lambda u: float(np.mean([f(u) for f in fns])), n, seed=5)
    assert (fixed["low"], fixed["high"]) == pytest.approx((alone["low"], alone["high"]), abs=1e-12)
    # runs resampled: patients first, then runs, from one generator
    rng = np.random.default_rng(5)
    units, runs = rng.integers(0, n, (1000, n)), rng.integers(0, 2, (1000, 2))
    direct = [np.mean([fns[r](u) for r in rr]) for u, rr in zip(units, runs)]
    assert (joint["low"], joint["high"]) == pytest.approx(tuple(np.quantile(direct, [0.025, 0.975])), abs=1e-12)


def test_paired_bootstrap_of_a_uniformly_better_method():
    values, _ = grouped_values(seed=2)
    better = dict(values, dice=[v + 0.05 for v in values["dice"]])
    a = [unit_statistic("segmentation", better, "dice")] * 3
    b = [unit_statistic("segmentation", values, "dice")] * 3
    out = paired_bootstrap(a, b, n_units(values), seed=0)
    assert out["difference"] == pytest.approx(0.05) and out["low"] == pytest.approx(0.05) and out["p"] == 0.0


def test_holm_step_down():
    assert holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(holm([0.01, float("nan")])[1]) and holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_repeats_draw_distinct_subsets_while_they_exist():
    cases = [SegCase(np.zeros(1), np.ones(1), f"c{i}", group=f"g{i // 2}") for i in range(10)]  # 5 patients
    five = draw_subsets(cases, 0.2, list(range(5)), by_group=True)  # one patient: 5 possible subsets
    assert five.n_possible == 5 and five.n_distinct == 5 and five.note is None
    assert len({frozenset(c.group for c in s) for s in five.subsets}) == 5
    six = draw_subsets(cases, 0.2, list(range(6)), by_group=True)
    assert six.subsets[:5] == five.subsets and "only 5 distinct" in six.note
    assert draw_subsets(cases, 0.2, list(range(5)), by_group=True).subsets == five.subsets  # seeded


def tiny(data, out, **kw) -> FinetuneConfig:
    cfg = FinetuneConfig(target="segmentation", data=str(data), out=str(out), width=2, epochs=1, steps_per_epoch=1,
                         batch_size=2, device="cpu", amp=False, **kw)
    cfg.evaluation.bootstrap_resamples = 50
    return cfg


def test_repeats_record_distinct_patients_that_match_the_samples_trained_on(tmp_path, monkeypatch):
    import finetune.engine as engine
    from finetune.data import unit_group

    seen: list[list[str]] = []
    sample_batch = engine.sample_batch

    def spy(task, train, *args, **kwargs):
        seen.append(sorted({unit_group(s) for s in train}))
        return sample_batch(task, train, *args, **kwargs)

    monkeypatch.setattr(engine, "sample_batch", spy)
    train = patches_h5(tmp_path / "train.h5", n=12)  # 6 patients of 2 patches; 1 validates, 5 train
    test = patches_h5(tmp_path / "test.h5", n=4, seed=1)
    metrics = run_finetune(tiny(train, tmp_path / "out", group_size=2, test_data=str(test), label_fractions=(0.2,),
                                repeats=5), log=lambda s: None)
    fraction = metrics["label_fractions"][0]
    runs = fraction["runs"]
    assert len({tuple(r["train_groups"]) for r in runs}) == 5 and fraction["n_distinct_draws"] == 5
    assert [r["train_groups"] for r in runs] == seen  # one training step per run
    for r in runs:
        result = json.loads((tmp_path / "out" / r["result"]).read_text())
        assert result["train_groups"] == r["train_groups"] and result["val_groups"] == r["val_groups"]
        assert len(r["val_groups"]) == 1 and not set(r["val_groups"]) & set(r["train_groups"])
    # one training patient is fewer than min_train_patients (3): said in the log record and metrics.md
    assert any("fewer than min_train_patients = 3" in w for w in fraction["warnings"])
    assert "fewer than min_train_patients = 3" in (tmp_path / "out" / "metrics.md").read_text()
    assert metrics["test_unit"] == "patients" and metrics["n_test_units"] == 2


def test_run_ci_resamples_test_patients_and_empty_masks_are_reported_apart(tmp_path):
    import h5py

    train = patches_h5(tmp_path / "train.h5", n=12)
    test = patches_h5(tmp_path / "test.h5", n=9, seed=1)
    with h5py.File(test, "a") as f:  # cases 2 and 5 have no foreground
        labels = f["labels"][()]
        labels[[2, 5]] = 0
        f["labels"][...] = labels
    logs: list[str] = []
    metrics = run_finetune(tiny(train, tmp_path / "out", group_size=3, test_data=str(test)), log=logs.append)
    assert metrics["n_test_units"] == 3 and metrics["n_test_samples"] == 9
    empty = metrics["empty_masks"]
    assert empty["n_test_cases_without_foreground"] == 2 and empty["cases"] == ["test#2", "test#5"]
    assert any("2 of 9 test cases have no foreground" in line and "test#2, test#5" in line for line in logs)
    run = metrics["label_fractions"][0]["runs"][0]
    units = json.loads((tmp_path / "out" / run["result"]).read_text())["test_units"]
    dice = np.asarray(units["dice"])
    fg = np.asarray(units["foreground"])
    assert fg.tolist() == [k not in (2, 5) for k in range(9)]
    assert run["metrics"]["dice"] == pytest.approx(dice[fg].mean())
    assert run["metrics_all_cases"]["dice"] == pytest.approx(dice.mean())
    # the run's CI: a bootstrap over the 3 test patients (test#0-2, #3-5, #6-8) of the foreground cases
    draws = np.random.default_rng(0).integers(0, 3, (50, 3))
    means = [np.mean([d for k in draw for d, f in zip(dice[3 * k:3 * k + 3], fg[3 * k:3 * k + 3]) if f]) for draw in draws]
    assert (run["ci"]["dice"]["low"], run["ci"]["dice"]["high"]) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert "have no foreground" in (tmp_path / "out" / "metrics.md").read_text()


def test_training_labels_without_any_foreground_stop_before_training(tmp_path, monkeypatch):
    import finetune.engine as engine
    from _owndata import ct_case, write_nifti

    rows = {}
    for split, n, classes in (("training", 3, 1), ("validation", 1, 2), ("test", 1, 2)):  # 1 class: empty mask
        rows[split] = []
        for i in range(n):
            image, label = ct_case(10 * len(rows) + i, n_classes=classes)
            rows[split].append({"image": str(write_nifti(tmp_path / f"{split}{i}.nii.gz", image)),
                                "label": str(write_nifti(tmp_path / f"{split}{i}-seg.nii.gz", label, dtype=np.uint8))})
    (tmp_path / "list.json").write_text(json.dumps(rows))
    monkeypatch.setattr(engine, "train_run", lambda *a, **k: pytest.fail("trained on labels without foreground"))
    with pytest.raises(DatasetLayoutError, match="no training label holds any foreground"):
        run_finetune(tiny(tmp_path / "list.json", tmp_path / "out", crop=(16, 16, 16)), log=lambda s: None)


def test_compare_refuses_other_test_sets_and_compares_the_same_settings(tmp_path):
    train = patches_h5(tmp_path / "train.h5", n=12)
    test = patches_h5(tmp_path / "test.h5", n=4, seed=1)
    other_test = patches_h5(tmp_path / "other.h5", n=4, seed=2)
    common = {"group_size": 2, "repeats": 2}
    run_finetune(tiny(train, tmp_path / "a", test_data=str(test), **common), log=lambda s: None)
    with pytest.raises(ConfigError, match="test_fingerprint") as err:
        run_finetune(tiny(train, tmp_path / "b", test_data=str(other_test), compare=str(tmp_path / "a"), **common),
                     log=lambda s: None)
    assert "n_test_units" not in str(err.value)  # only what differs is named
    assert not (tmp_path / "b" / "fraction-1").exists()  # refused before any training
    same = run_finetune(tiny(train, tmp_path / "c", test_data=str(test), compare=str(tmp_path / "a"), init="msra",
                             **common), log=lambda s: None)
    row = same["comparison"]["fractions"][0]["dice"]
    assert same["comparison"]["left_out"] == [] and same["comparison"]["fractions"][0]["seeds"] == [0, 1]
    a = [r["metrics"]["dice"] for r in same["label_fractions"][0]["runs"]]
    b = [r["metrics"]["dice"] for r in json.loads((tmp_path / "a" / "metrics.json").read_text())["label_fractions"][0]["runs"]]
    assert row["n_a"] == row["n_b"] == 2
    assert row["p_welch"] == pytest.approx(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue, nan_ok=True)
    assert row["p_paired"] == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue, nan_ok=True)
    assert row["bootstrap"]["difference"] == pytest.approx(np.mean(a) - np.mean(b))


def test_study_corrects_all_comparisons_together_and_judges_by_the_paired_test():
    from benchmarks.study_label_efficiency import markdown, study_rows

    def doc(comparisons):
        fractions = [{"fraction": fr, "n_train_patients": [1], "warnings": [],
                      "aggregate": {"dice": {"mean": 0.5, "sd": 0.1, "n_runs": 5, "ci_low": 0.4, "ci_high": 0.6}}}
                     for fr in (0.1, 1.0)]
        comparison = {"fractions": [{"fraction": fr, "dice": {"p_paired": p, "p_welch": 0.5, "mean_difference": 0.1,
                                                                "bootstrap": None}} for fr, p in comparisons]}
        return {"label_fractions": fractions, "comparison": comparison if comparisons else None}

    configs = {"scratch": {"metrics": doc([])}, "combined": {"metrics": doc([(0.1, 0.03), (1.0, 0.04)])}}
    rows = study_rows(configs, "dice")
    tested = [r for r in rows if r["vs_scratch"]]
    assert [r["p_paired_holm"] for r in tested] == pytest.approx([0.06, 0.06])  # 2 x 0.03, then max(0.06, 0.04)
    assert [r["verdict"] for r in tested] == ["no significant effect"] * 2  # p < 0.05 each, not after Holm
    text = markdown({"target": "segmentation", "data": "d", "data_source": "s", "notes": [], "settings": {}, "seeds": 5,
                     "test": "t", "primary_metric": "dice", "configs": configs, "rows": rows})
    assert "Holm-corrected over the 2 comparisons" in text and "did not help detectably" in text


def test_a_test_set_keeps_its_own_groups_and_takes_group_size_only_without_them(tmp_path):
    from genesis.data.layouts import read_dataset

    grouped = patches_h5(tmp_path / "g.h5", n=6, groups=np.array([b"a", b"a", b"b", b"b", b"b", b"c"]))
    plain = patches_h5(tmp_path / "p.h5", n=6)
    own = read_dataset(grouped, group_size=3, group_size_where_ungrouped=True)
    assert [it.group for it in own.items] == ["a", "a", "b", "b", "b", "c"]
    assert len({it.group for it in read_dataset(plain, group_size=3, group_size_where_ungrouped=True).items}) == 2
    with pytest.raises(DatasetLayoutError, match="--group-size is only for files without them"):
        read_dataset(grouped, group_size=3)  # --data itself: a contradiction stays an error
