"""Sound decisions end to end, on synthetic data whose truth is known: no leakage through
duplicates on either data path (and both paths fit the same values), calibrated probabilities
for every strategy, label-free outlier handling, a shuffled out-of-core training split, the
validation halves' gate, and champion/challenger comparisons that never score the champion on
rows it saw."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tasks.out_of_core.batches as batches
from flows.train import IN_MEMORY, OUT_OF_CORE, train_flow
from tasks.errors import GateFailed
from tasks.ingest import HASH_COLUMN, ID_COLUMN, TARGET_COLUMN
from tests.conftest import FAST


def heavy_data(n: int = 900, seed: int = 0) -> pd.DataFrame:
    """Duplicated rows (40% of rows repeat another), heavy tails, a missing-prone categorical
    and an integer-coded categorical, ~10% positives related to the features."""
    rng = np.random.default_rng(seed)
    base = n * 6 // 10
    frame = pd.DataFrame(
        {
            "amount": np.round(rng.standard_t(2, base) * 10 + 50, 2),
            "score": np.round(rng.normal(size=base), 3),
            "count": rng.poisson(2, base),
            "city": rng.choice(["north", "south", "east", None], base, p=[0.4, 0.3, 0.2, 0.1]),
            "region": rng.choice([1, 2, 3], base),
        }
    )
    logit = -2.6 + 1.2 * frame["score"] + 0.3 * (frame["count"] - 2)
    frame["label"] = np.where(rng.random(base) < 1 / (1 + np.exp(-logit)), "bad", "good")
    repeats = frame.sample(n - base, replace=True, random_state=seed)
    return pd.concat([frame, repeats]).sample(frac=1, random_state=seed + 1).reset_index(drop=True)


def data_config(make_config, path: Path, **overrides):
    settings = {
        "data": str(path),
        "target": "label",
        "positive": "bad",
        "id": None,
        "categorical": ["city", "region"],
        "impute": "most_frequent",
    } | overrides
    return make_config(**settings)


def run_stages(config, work: Path, out_of_core: bool):
    work.mkdir(parents=True, exist_ok=True)
    stages = OUT_OF_CORE if out_of_core else IN_MEMORY  # the two twins, same signatures
    ingested = stages.ingest.fn(config, work)
    splits = stages.split.fn(config, ingested, work)
    outliers = stages.handle_outliers.fn(config, ingested, splits, work)
    return ingested, splits, stages.build_features.fn(config, ingested, splits, outliers)


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(batches, "BATCH_ROWS", 128)


@pytest.mark.parametrize("outlier", ["zscore"])  # a filter: the paths must also drop alike
def test_both_data_paths_split_alike_without_leaking_duplicates_and_fit_the_same_values(
    make_config, write_csv, tmp_path, small_batches, outlier
):
    """The same file through the in-memory and the out-of-core path: identical assignments, no
    test row whose feature row is in train, the same fitted preprocessing and the same feature
    statistics (exact here: the quantile sample holds every training row)."""
    path = write_csv(heavy_data())
    config = data_config(make_config, path, outlier=outlier)
    results = {
        name: run_stages(config, tmp_path / name, name == "out_of_core")
        for name in ("in_memory", "out_of_core")
    }
    assignments = {}
    for name, (ingested, splits, _) in results.items():
        raw = pd.read_parquet(ingested.raw_path, columns=[ID_COLUMN, HASH_COLUMN])
        assignment = pd.read_parquet(splits.assignment_path).merge(raw, on=ID_COLUMN)
        train_hashes = set(assignment.loc[assignment["__split"] == "train", HASH_COLUMN])
        test = assignment[assignment["__split"] == "test"]
        assert not test[HASH_COLUMN].isin(train_hashes).any(), name
        assert splits.gate["success"] and splits.duplicates_across_splits == 0
        assert ingested.exact_duplicate_rows > 0
        assignments[name] = assignment.sort_values(ID_COLUMN).reset_index(drop=True)
    pd.testing.assert_frame_equal(assignments["in_memory"], assignments["out_of_core"])

    memory, core = (results[k][2] for k in ("in_memory", "out_of_core"))
    a, b = memory.preprocessing(), core.preprocessing()
    assert a.categories == b.categories and a.impute_values == b.impute_values
    assert a.integer_valued == b.integer_valued == ["count"]
    assert a.clip_bounds.keys() == b.clip_bounds.keys()
    assert a.quantiles.keys() == b.quantiles.keys() == set(a.numeric)  # the default transform
    for column in a.numeric:
        for got, want in zip(a.quantiles[column], b.quantiles[column], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12)
        assert a.means[column] == pytest.approx(b.means[column], rel=1e-9)
        assert a.scales[column] == pytest.approx(b.scales[column], rel=1e-9)
    stats_a, stats_b = memory.manifest["feature_stats"], core.manifest["feature_stats"]
    assert stats_a.keys() == stats_b.keys()
    for column, sa in stats_a.items():
        sb = stats_b[column]
        if sa["kind"] == "categorical":
            assert sa["frequencies"] == pytest.approx(sb["frequencies"])
            assert ("<NA>" in sa["frequencies"]) == (column == "city")
            continue
        for key in ("mean", "std", "missing_share"):
            assert sa[key] == pytest.approx(sb[key], rel=1e-9, abs=1e-12)
        assert sa["percentiles"] == pytest.approx(sb["percentiles"])
        for key in ("edges", "shares"):
            assert sa["bins"][key] == pytest.approx(sb["bins"][key])
    assert memory.manifest["splits"] == core.manifest["splits"]


def test_the_out_of_core_drift_reference_sees_no_drift_in_its_own_training_rows(
    make_config, write_csv, tmp_path, small_batches
):
    """A missing category was keyed 'None' by one path and looked up as '<NA>': PSI 3.9 on
    identical data. One key now."""
    from tasks.drift import DriftSettings, drift_table

    config = data_config(make_config, write_csv(heavy_data()))
    ingested, splits, feature_set = run_stages(config, tmp_path / "ooc", True)
    raw = pd.read_parquet(ingested.raw_path)
    ids = pd.read_parquet(feature_set.location / "ids.parquet")
    train = raw[raw[ID_COLUMN].isin(ids.loc[ids.split == "train", ID_COLUMN])]
    table = drift_table(train, feature_set.manifest["feature_stats"], DriftSettings())
    assert table["psi"].max() < 0.01, table


def test_a_label_sorted_file_streams_mixed_batches_out_of_core(
    make_config, write_csv, tmp_path, small_batches
):
    """The stored training split is in seeded random order: every row group (what the training
    stream reads a window of) holds both classes near the overall rate."""
    import pyarrow.parquet as pq

    frame = heavy_data(1500).sort_values("label").reset_index(drop=True)
    config = data_config(make_config, write_csv(frame))
    _, _, feature_set = run_stages(config, tmp_path / "ooc", True)
    train = pq.ParquetFile(feature_set.split_path("train"))
    rates = [
        train.read_row_group(g, columns=[TARGET_COLUMN]).column(0).to_numpy().mean()
        for g in range(train.num_row_groups)
    ]
    overall = pd.read_parquet(feature_set.split_path("train"))[TARGET_COLUMN].mean()
    sizes = [train.metadata.row_group(g).num_rows for g in range(train.num_row_groups)]
    assert len(rates) > 1
    for rate, size in zip(rates, sizes, strict=True):
        assert abs(rate - overall) < 4 * np.sqrt(overall * (1 - overall) / size) + 1e-9


def test_too_few_positives_for_a_validation_half_is_refused_with_counts(make_config, write_csv):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=400), "label": ["good"] * 385 + ["bad"] * 15})
    config = make_config(
        data=str(write_csv(frame)),
        target="label",
        positive="bad",
        id=None,
        categorical=[],
        min_class_count=10,
    )
    with pytest.raises(
        GateFailed,
        match=r"the '(stop|tune)' half of the validation split has \d positive rows; at least 5",
    ):
        train_flow(config)


# --- probabilities --------------------------------------------------------------------------------


def posterior_data(n: int = 6000, seed: int = 3) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    posterior = 1 / (1 + np.exp(-(-2.8 + 1.4 * x[:, 0] - 1.0 * x[:, 1] + 0.6 * x[:, 2])))
    frame = pd.DataFrame(np.round(x, 5), columns=["x0", "x1", "x2", "x3"])
    frame["row"] = np.arange(n)
    frame["y"] = (rng.random(n) < posterior).astype(int)
    return frame, posterior


def expected_calibration_error(p: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    """Equal-mass bins of the predicted probability; gap to the known posterior in each."""
    order = np.argsort(p, kind="mergesort")
    return float(
        sum(
            len(c) / len(p) * abs(p[c].mean() - truth[c].mean())
            for c in np.array_split(order, bins)
        )
    )


@pytest.mark.slow
def test_every_strategy_reports_calibrated_probabilities(tmp_path):
    """Against the known posterior, every strategy's `probability_corrected` has ECE at most
    max(0.03, 2x the baseline's): the focal-loss and ensemble maps included."""
    frame, posterior = posterior_data()
    path = tmp_path / "posterior.csv"
    frame.to_csv(path, index=False)
    config = fast_config_for(tmp_path, path)
    result = train_flow(config)
    metrics = json.loads(Path(result.metrics_path).read_text())
    errors = {}
    for record in metrics["strategies"]:
        predictions = pd.read_parquet(
            Path(result.run_dir) / "branches" / record["strategy"] / "predictions.parquet"
        )
        test = predictions[predictions.part == "test"]
        truth = posterior[test[ID_COLUMN].to_numpy().astype(int)]
        errors[record["strategy"]] = expected_calibration_error(
            test.probability_corrected.to_numpy(), truth
        )
    limit = max(0.03, 2 * errors["baseline"])
    assert all(e <= limit for e in errors.values()), f"{limit}: {sorted(errors.items())}"
    assert errors["focal_loss"] <= limit and errors["ensemble"] <= limit


def fast_config_for(tmp_path, path, **overrides):
    from tasks.config import TrainConfig

    settings = {
        **FAST,
        "hidden": [16],
        "epochs": 15,
        "patience": 4,
        "batch_size": 128,
        "ensemble_k": 3,
        "data": str(path),
        "target": "y",
        "positive": "1",
        "id": "row",
        "runs_dir": str(tmp_path / "runs"),
        "max_parallel": 2,
    } | overrides
    return TrainConfig(**settings)


# --- outliers -------------------------------------------------------------------------------------


def test_extreme_values_do_not_become_a_sign_of_the_rare_class(tmp_path):
    """Labels independent of the features: the old default dropped only majority-class extremes,
    so every extreme training row was positive and test negatives outside the bounds scored
    1.7-1.9x higher than those inside. The label-free default (clip) gives them no such lift."""
    frame = independent_labels()
    path = tmp_path / "independent.csv"
    frame.to_csv(path, index=False)
    result = train_flow(fast_config_for(tmp_path, path, strategies=["baseline"], epochs=10))
    outliers = result.feature_set.manifest["outliers"]
    assert outliers["method"] == "clip" and outliers["removed"] == {"1": 0, "0": 0}
    predictions = pd.read_parquet(
        Path(result.run_dir) / "branches" / "baseline" / "predictions.parquet"
    )
    test = predictions[(predictions.part == "test") & (predictions.y == 0)]
    rows = frame.set_index("row").loc[test[ID_COLUMN].to_numpy()]
    outside = np.zeros(len(rows), dtype=bool)
    for column, (low, high) in outliers["bounds"].items():
        outside |= ((rows[column] < low) | (rows[column] > high)).to_numpy()
    assert outside.sum() >= 10
    ratio = test.probability[outside].mean() / test.probability[~outside].mean()
    assert ratio < 1.25, ratio


def independent_labels(n: int = 4000) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(np.round(rng.standard_t(3, size=(n, 4)), 4), columns=["a", "b", "c", "d"])
    frame["row"] = np.arange(n)
    frame["y"] = (rng.random(n) < 0.1).astype(int)
    return frame


@pytest.mark.parametrize("method", ["zscore", "iqr"])
def test_row_filters_drop_extremes_of_both_classes_alike(make_config, write_csv, stages, method):
    """The filters are label-free: on labels independent of the features, both classes lose
    the same share of their training rows (within sampling noise), and positives are dropped."""
    frame = independent_labels()
    config = make_config(
        data=str(write_csv(frame)),
        target="y",
        positive="1",
        id="row",
        categorical=[],
        outlier=method,
        max_removed_share=0.5,
    )
    result = stages(config, upto="outliers")
    removed, counts = result["outliers"].removed, result["split"].counts["train"]
    positives, negatives = counts["positives"], counts["rows"] - counts["positives"]
    share_pos, share_neg = removed["1"] / positives, removed["0"] / negatives
    assert removed["1"] > 0
    assert abs(share_pos - share_neg) < 4 * np.sqrt(share_neg * (1 - share_neg) / positives)


def test_a_time_split_reports_feature_duplicates_across_splits_instead_of_refusing(
    make_config, write_csv, stages
):
    """The past may repeat: on a time split identical feature rows in train and test are
    counted and reported (manifest and report), not a gate failure."""
    frame = heavy_data(600)
    frame["when"] = pd.date_range("2024-01-01", periods=len(frame), freq="h").astype(str)
    config = data_config(
        make_config, write_csv(frame), split_by="time:when", split_ratio_tolerance=0.2
    )
    result = stages(config)
    assert result["split"].gate["success"] and result["split"].duplicates_across_splits > 0
    manifest = result["features"].manifest
    assert manifest["feature_duplicates_across_splits"] == result["split"].duplicates_across_splits
    assert sum(manifest["split_shares"].values()) == pytest.approx(1.0)
