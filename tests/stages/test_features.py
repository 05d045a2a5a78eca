import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.features import (
    MANIFEST,
    fingerprint,
    fit_quantiles,
    load_valid_feature_set,
    normal_scores,
)
from tasks.ingest import ID_COLUMN, ROW_COLUMN, TARGET_COLUMN
from tasks.split import SPLIT_COLUMN


def training_rows(result) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(all ingested rows with their split, the training rows the preprocessing was fitted on)."""
    raw = pd.read_parquet(result["ingest"].raw_path).merge(
        pd.read_parquet(result["split"].assignment_path, columns=[ROW_COLUMN, SPLIT_COLUMN]),
        on=ROW_COLUMN,
    )
    removed = set(pd.read_parquet(result["outliers"].removed_path)[ROW_COLUMN])
    return raw, raw[(raw[SPLIT_COLUMN] == "train") & ~raw[ROW_COLUMN].isin(removed)]


@pytest.mark.parametrize("transform", ["quantile", "robust"])
def test_scaler_and_encoder_are_fitted_on_training_rows_only(make_config, stages, transform):
    result = stages(make_config(numeric_transform=transform))
    fs = result["features"]
    prep = fs.preprocessing()
    raw, train = training_rows(result)
    clipped = train["age"].clip(*prep.clip_bounds["age"])  # the default winsorises
    assert prep.quantiles["age"] == fit_quantiles(clipped.to_frame(), transform)["age"]
    shaped = normal_scores(clipped.to_numpy()[:, None], ["age"], prep.quantiles)[:, 0]
    assert prep.means["age"] == pytest.approx(shaped.mean())
    assert prep.scales["age"] == pytest.approx(shaped.std())
    everyone = raw["age"].clip(*prep.clip_bounds["age"]).to_frame()
    assert prep.quantiles["age"] != fit_quantiles(everyone, transform)["age"]
    assert prep.categories["segment"] == ["bronze", "gold", "silver"]

    stored_train = pd.read_parquet(fs.split_path("train"))
    assert stored_train["age"].mean() == pytest.approx(0, abs=1e-5)
    assert stored_train["age"].std(ddof=0) == pytest.approx(1, abs=1e-4)
    assert stored_train["segment"].dtype == np.int32 and stored_train["segment"].min() >= 0
    test = pd.read_parquet(fs.split_path("test"))
    assert test["age"].mean() != pytest.approx(0, abs=1e-3)  # test rows were not used to fit


def test_the_standard_transform_is_the_training_rows_mean_and_std(make_config, stages):
    result = stages(make_config(numeric_transform="standard"))
    prep = result["features"].preprocessing()
    raw, train = training_rows(result)
    clipped = train["age"].clip(*prep.clip_bounds["age"])
    assert prep.quantiles == {}
    assert prep.means["age"] == pytest.approx(clipped.mean())
    assert prep.scales["age"] == pytest.approx(clipped.std(ddof=0))
    assert prep.means["age"] != pytest.approx(raw["age"].mean(), abs=1e-6)


def test_manifest_describes_the_feature_set(make_config, stages):
    fs = stages(make_config())["features"]
    manifest = fs.manifest
    assert (
        manifest["splits"]["validation"]["rows"] == 80
        and manifest["splits"]["test"]["positives"] == 12
    )
    assert set(manifest["files"]) == {
        "train.parquet",
        "validation.parquet",
        "test.parquet",
        "ids.parquet",
        "preprocessing.json",
    }
    assert manifest["columns"][-2:] == [TARGET_COLUMN, ID_COLUMN]
    assert manifest["versions"]["keras"] == "3.15.1"
    assert manifest["gates"]["features"]["success"]
    ids = pd.read_parquet(f"{fs.path}/ids.parquet")
    assert set(ids.split) == {"train", "validation", "test"}
    for name in ("train", "validation", "test"):
        assert set(pd.read_parquet(fs.split_path(name))[ID_COLUMN]) == set(
            ids.loc[ids.split == name, ID_COLUMN]
        )


def test_fingerprint_covers_feature_settings_only(make_config):
    sha = "abc"
    assert fingerprint(make_config(epochs=3), sha) == fingerprint(
        make_config(epochs=30, strategies=["baseline"]), sha
    )
    assert fingerprint(make_config(), sha) != fingerprint(make_config(outlier="iqr"), sha)
    assert fingerprint(make_config(), sha) != fingerprint(make_config(), "abd")


def test_store_is_reused_and_rebuilt_when_a_file_is_deleted(make_config, stages):
    config = make_config()
    fs = stages(config)["features"]
    store = config.store_dir
    assert load_valid_feature_set(store, fs.fingerprint).reused
    (store / fs.fingerprint / "test.parquet").unlink()
    assert load_valid_feature_set(store, fs.fingerprint) is None
    rebuilt = stages(config)["features"]
    assert rebuilt.fingerprint == fs.fingerprint and not rebuilt.reused
    assert load_valid_feature_set(store, fs.fingerprint) is not None


def test_tampered_file_invalidates_the_set(make_config, stages):
    config = make_config()
    fs = stages(config)["features"]
    frame = pd.read_parquet(fs.split_path("train"))
    frame.loc[0, "age"] += 1
    frame.to_parquet(fs.split_path("train"), index=False)
    assert load_valid_feature_set(config.store_dir, fs.fingerprint) is None


def test_interrupted_write_leaves_no_manifest(make_config, stages, monkeypatch):
    import tasks.features as features

    def crash(path, payload):
        raise KeyboardInterrupt("killed while writing the manifest")

    monkeypatch.setattr(features, "write_json", crash)
    config = make_config()
    with pytest.raises(KeyboardInterrupt):
        stages(config)
    store = config.store_dir
    assert list(store.glob(f"*/{MANIFEST}")) == []
    assert [p.name for p in store.iterdir()] == []  # the staging directory is gone too


def test_imputation_uses_training_statistics(make_config, stages, synthetic_frame, write_csv):
    frame = synthetic_frame.copy()
    frame.loc[frame.index % 10 == 0, "age"] = np.nan
    frame.loc[frame.index % 17 == 0, "segment"] = np.nan
    result = stages(make_config(data=str(write_csv(frame)), impute="median"))
    prep = result["features"].preprocessing()
    raw, train = training_rows(result)
    assert prep.impute_values["age"] == pytest.approx(train["age"].median())
    assert prep.impute_values["segment"] in prep.categories["segment"]
    for name in ("train", "validation", "test"):
        assert not pd.read_parquet(result["features"].split_path(name)).isna().any().any()


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 60),
    columns=st.integers(1, 6),
    missing=st.sampled_from([0.0, 0.3, 1.0]),
    decimals=st.sampled_from([0, 1, 6]),
    seed=st.integers(0, 2**16),
)
def test_the_drift_bins_taken_from_the_percentiles_are_the_columns_own(
    rows, columns, missing, decimals, seed
):
    """feature_statistics takes each column's decile edges from the percentiles it computes for
    all columns at once; they are exactly the edges and shares histogram_bins finds for that
    column alone (ties, missing values, an all-missing column, one row)."""
    from tasks.features import Preprocessing, feature_statistics, histogram_bins

    rng = np.random.default_rng(seed)
    values = np.round(rng.standard_cauchy((rows, columns)), decimals)
    values[rng.random((rows, columns)) < missing] = np.nan
    frame = pd.DataFrame(values, columns=[f"x{j}" for j in range(columns)])
    prep = Preprocessing.model_construct(numeric=list(frame.columns), categorical=[])
    stats = feature_statistics(frame, prep)
    for column in frame.columns:
        assert stats[column]["bins"] == histogram_bins(frame[column]), column
