import numpy as np
import pandas as pd
import pytest

from tasks.errors import GateFailed
from tasks.ingest import ROW_COLUMN, TARGET_COLUMN
from tasks.outliers import fit_bounds, seed_article_rule
from tasks.split import SPLIT_COLUMN


def frames(result):
    raw = pd.read_parquet(result["ingest"].raw_path)
    split = pd.read_parquet(result["split"].assignment_path, columns=[ROW_COLUMN, SPLIT_COLUMN])
    return raw.merge(split, on=ROW_COLUMN)


def test_bounds_come_from_training_rows_only(make_config, stages):
    result = stages(make_config(), upto="outliers")
    raw = frames(result)
    train = raw[raw[SPLIT_COLUMN] == "train"]
    mean, std = train["amount"].mean(), train["amount"].std(ddof=0)
    low, high = result["outliers"].bounds["amount"]
    assert low == pytest.approx(mean - 3 * std) and high == pytest.approx(mean + 3 * std)
    everything = raw["amount"].mean() + 3 * raw["amount"].std(ddof=0)
    assert high != pytest.approx(everything)
    assert "has_card" not in result["outliers"].bounds  # 0/1 flag
    assert "segment" not in result["outliers"].bounds  # declared categorical


def test_the_zscore_filter_drops_training_extremes_of_both_classes(make_config, stages):
    """Label-free: every training row outside a bound goes, whatever its class; nothing else."""
    result = stages(make_config(outlier="zscore"), upto="outliers")
    raw = frames(result)
    removed = set(pd.read_parquet(result["outliers"].removed_path)[ROW_COLUMN])
    bounds = result["outliers"].bounds
    outside = np.zeros(len(raw), dtype=bool)
    for column, (low, high) in bounds.items():
        outside |= ((raw[column] < low) | (raw[column] > high)).to_numpy()
    expected = raw[outside & (raw[SPLIT_COLUMN] == "train").to_numpy()]
    assert set(expected[ROW_COLUMN]) == removed
    dropped = raw[raw[ROW_COLUMN].isin(removed)]
    assert result["outliers"].removed == {
        "yes": int((dropped[TARGET_COLUMN] == 1).sum()),
        "no": int((dropped[TARGET_COLUMN] == 0).sum()),
    }
    assert result["outliers"].removed["yes"] > 0  # extremes of the rare class go too


def test_iqr_bounds(synthetic_frame):
    bounds = fit_bounds(synthetic_frame, ["age"], "iqr", 3.0, 1.5)
    q1, q3 = synthetic_frame["age"].quantile([0.25, 0.75])
    assert bounds["age"] == pytest.approx((q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)))


def test_gate_refuses_to_remove_too_much(make_config, stages):
    with pytest.raises(
        GateFailed,
        match=r"remove a share of 0\.\d+ of the 'negative' class's training rows; "
        r"at most 0.01 allowed",
    ):
        stages(
            make_config(outlier="iqr", outlier_iqr_k=0.1, max_removed_share=0.01), upto="outliers"
        )


def test_clip_drops_nothing_and_bounds_apply_to_every_split(make_config, stages):
    result = stages(make_config(outlier="clip", outlier_z=1.5))
    assert result["outliers"].removed == {"yes": 0, "no": 0}
    assert sum(result["outliers"].clipped_values.values()) > 0
    prep = result["features"].preprocessing()
    low, high = prep.clip_bounds["amount"]
    for name in ("train", "validation", "test"):
        scaled = pd.read_parquet(result["features"].split_path(name))["amount"]
        original_max = scaled.max() * prep.scales["amount"] + prep.means["amount"]
        assert original_max <= high + 1e-3


def test_seed_article_rule_on_wisconsin_data_drops_47_and_12_percent():
    from tasks.datasets import BUILTINS

    frame = BUILTINS["breast_cancer"].load()
    columns = [c for c in frame.columns if c not in ("id", "diagnosis")]
    removed = seed_article_rule(frame, columns, frame["diagnosis"])
    assert removed["M"]["share"] == pytest.approx(0.47, abs=0.005)
    assert removed["B"]["share"] == pytest.approx(0.12, abs=0.005)
