"""The out-of-core data path: data larger than --memory-budget is read, gated, split, filtered
and turned into features in batches, with the same store layout and the same guarantees."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tasks.out_of_core.batches as batches
from flows.train import train_flow
from tasks import out_of_core
from tasks.errors import DataInputError, GateFailed
from tasks.features import normal_scores
from tasks.out_of_core.batches import RunningMoments, uncompressed_size
from tests.conftest import SYNTHETIC, fast_config


@pytest.fixture
def small_batches(monkeypatch):
    """Batches of 64 rows and a 150-row sample, so 400 rows exercise every merge."""
    monkeypatch.setattr(batches, "BATCH_ROWS", 64)
    monkeypatch.setattr(batches, "SAMPLE_ROWS", 150)


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    """One out-of-core run on the synthetic CSV, gzipped, with small batches."""
    mp = pytest.MonkeyPatch()
    mp.setattr(batches, "BATCH_ROWS", 64)
    mp.setattr(batches, "SAMPLE_ROWS", 150)
    tmp = tmp_path_factory.mktemp("streamed")
    data = tmp / "synthetic.csv.gz"
    data.write_bytes(gzip.compress(SYNTHETIC.read_bytes()))
    config = fast_config(
        tmp / "runs",
        data=str(data),
        memory_budget="10KB",
        strategies=["baseline", "undersample", "smote"],
    )
    try:
        yield config, train_flow(config)
    finally:
        mp.undo()


def test_the_run_streams_and_says_why(streamed):
    config, result = streamed
    run = json.loads((Path(result.run_dir) / "run.json").read_text())
    notes = " ".join(run["ingest"]["notes"])
    assert "out of core, in batches of 64 rows" in notes and "over --memory-budget 10KB" in notes
    manifest = result.feature_set.manifest
    assert manifest["out_of_core"] is True
    assert manifest["split_method"].startswith("stratified; rows sharing feature values kept")
    assert run["ingest"]["n_rows"] == 400


def test_strategies_that_copy_are_skipped_and_the_rest_train(streamed):
    _, result = streamed
    records = {
        r["strategy"]: r for r in json.loads(Path(result.metrics_path).read_text())["strategies"]
    }
    assert records["smote"]["status"] == "skipped"
    assert "synthesises rows from the whole training split" in records["smote"]["error"]
    assert records["baseline"]["status"] == records["undersample"]["status"] == "ok"
    assert result.selected in ("baseline", "undersample")


def test_networks_train_from_the_store_by_row_group(streamed):
    """The training split is never loaded whole: the networks stream it (the stored split has
    many row groups here), the reference fits on a sample, and every training row is counted."""
    import pyarrow.parquet as pq

    _, result = streamed
    records = {
        r["strategy"]: r for r in json.loads(Path(result.metrics_path).read_text())["strategies"]
    }
    train_rows = result.feature_set.manifest["splits"]["train"]["rows"]
    assert pq.ParquetFile(result.feature_set.split_path("train")).metadata.num_row_groups > 3
    for name in ("baseline", "undersample"):
        assert records[name]["training_data"] == "streamed from the store by row group"
    assert sum(records["baseline"]["train_class_counts"].values()) == train_rows
    counts = records["undersample"]["train_class_counts"]
    assert len(set(counts.values())) == 1  # balanced by position, without a copy
    assert records["reference"]["trained_on"].startswith(
        f"{train_rows} of {train_rows} training rows"
    )


def test_scaler_statistics_are_exact_on_training_rows(streamed):
    """Merged batch moments give the same means and scales as the whole training split at once."""
    _, result = streamed
    store = Path(result.feature_set.path)
    train = pd.read_parquet(store / "train.parquet")
    prep = result.feature_set.preprocessing()
    for column in prep.numeric:
        assert abs(train[column].astype("float64").mean()) < 1e-6
        assert train[column].astype("float64").std(ddof=0) == pytest.approx(1.0, abs=1e-5)
    raw = pd.read_csv(SYNTHETIC).set_index("account_id")
    kept = raw.loc[train["__id"]]
    assert prep.categories["segment"] == sorted(kept["segment"].unique())
    clipped = kept["amount"].clip(*prep.clip_bounds["amount"])  # the default winsorises
    shaped = normal_scores(clipped.to_numpy()[:, None], ["amount"], prep.quantiles)[:, 0]
    assert prep.means["amount"] == pytest.approx(shaped.mean(), rel=1e-9, abs=1e-12)


def test_splits_are_stratified_disjoint_and_the_default_clips_without_removing(streamed):
    _, result = streamed
    store = Path(result.feature_set.path)
    ids = pd.read_parquet(store / "ids.parquet")
    assert ids["__id"].is_unique  # each id in exactly one split
    rates = ids.groupby("split")["y"].mean()
    assert (rates - ids["y"].mean()).abs().max() < 0.05
    manifest = result.feature_set.manifest
    assert manifest["outliers"]["method"] == "clip"  # label-free: nothing is removed
    assert manifest["outliers"]["removed"] == {"yes": 0, "no": 0}
    assert sum(manifest["splits"][s]["rows"] for s in manifest["splits"]) == 400
    for name in ("validation", "test"):
        assert manifest["splits"][name]["rows"] == (ids["split"] == name).sum()


def test_drift_reference_statistics_are_complete(streamed):
    _, result = streamed
    stats = result.feature_set.manifest["feature_stats"]
    amount = stats["amount"]
    assert len(amount["percentiles"]) == 101 and amount["approximate"] is True
    assert sum(amount["bins"]["shares"]) == pytest.approx(1.0)
    assert sum(stats["segment"]["frequencies"].values()) == pytest.approx(1.0)


def test_report_says_the_seed_rule_was_not_computed(streamed):
    _, result = streamed
    assert "not computed (out-of-core path)" in Path(result.report_path).read_text()


def test_a_bad_value_in_a_later_batch_fails_the_gate_naming_rows_and_column(
    tmp_path, small_batches, synthetic_frame
):
    bad = synthetic_frame.astype({"amount": "object"})
    bad.loc[300, "amount"] = "twelve"
    data = tmp_path / "bad.csv"
    bad.to_csv(data, index=False)
    config = fast_config(
        tmp_path / "runs", data=str(data), memory_budget="10KB", strategies=["baseline"]
    )
    with pytest.raises(GateFailed, match=r"raw \(rows 256-319\) gate failed:\n.*amount.*type"):
        train_flow(config)
    assert not list((tmp_path / "runs" / "store").glob("*/manifest.json"))  # nothing stored


def test_running_moments_match_numpy_with_missing_values():
    rng = np.random.default_rng(0)
    values = rng.normal(30_000, 500, size=(1000, 3))
    values[rng.random((1000, 3)) < 0.1] = np.nan
    moments = RunningMoments(3)
    for start in range(0, 1000, 97):
        moments.update(values[start : start + 97])
    assert np.allclose(moments.mean, np.nanmean(values, axis=0), rtol=1e-12)
    assert np.allclose(moments.std, np.nanstd(values, axis=0), rtol=1e-9)
    assert moments.n.tolist() == (~np.isnan(values)).sum(axis=0).tolist()


def test_only_files_over_the_budget_stream(tmp_path):
    data = tmp_path / "d.csv.gz"
    data.write_bytes(gzip.compress(SYNTHETIC.read_bytes()))
    assert uncompressed_size(data) == SYNTHETIC.stat().st_size
    assert out_of_core.reason(fast_config(tmp_path, data=str(data))) is None  # no budget
    assert out_of_core.reason(fast_config(tmp_path, data=str(data), memory_budget="1GB")) is None
    assert "over --memory-budget 1KB" in out_of_core.reason(
        fast_config(tmp_path, data=str(data), memory_budget="1KB")
    )
    assert (
        out_of_core.reason(fast_config(tmp_path, data="breast_cancer", memory_budget="1KB")) is None
    )
    table = tmp_path / "d.parquet"
    pd.DataFrame({"a": np.zeros(1000), "b": ["x"] * 1000}).to_parquet(table)
    assert uncompressed_size(table) == 1000 * 2 * 8  # not the few bytes of its encoded pages


def test_a_header_without_rows_is_bad_input(tmp_path):
    data = tmp_path / "empty.csv"
    data.write_text("a,b,churned\n")
    config = fast_config(
        tmp_path / "runs", data=str(data), id=None, categorical=[], memory_budget="1B"
    )
    with pytest.raises(DataInputError, match="header but no rows"):
        out_of_core.ingest.fn(config, tmp_path)
