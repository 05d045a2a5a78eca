import numpy as np
import pandas as pd
import pytest

from tasks.errors import GateFailed
from tasks.split import HALF_COLUMN, SPLIT_COLUMN


def assignment(result) -> pd.DataFrame:
    return pd.read_parquet(result["split"].assignment_path)


def test_stratified_split_keeps_shares_and_class_mix(make_config, stages):
    result = stages(make_config(), upto="split")
    counts = result["split"].counts
    assert {k: v["rows"] for k, v in counts.items()} == {"train": 240, "validation": 80, "test": 80}
    assert {k: v["positives"] for k, v in counts.items()} == {
        "train": 36,
        "validation": 12,
        "test": 12,
    }
    halves = result["split"].halves
    assert halves["stop"]["rows"] + halves["tune"]["rows"] == 80
    assert halves["stop"]["positives"] == halves["tune"]["positives"] == 6
    assert result["split"].gate["success"]


def test_split_is_reproducible_and_seed_dependent(make_config, stages):
    a = assignment(stages(make_config(seed=1), upto="split"))
    b = assignment(stages(make_config(seed=1), upto="split"))
    c = assignment(stages(make_config(seed=2), upto="split"))
    assert a[SPLIT_COLUMN].tolist() == b[SPLIT_COLUMN].tolist()
    assert a[HALF_COLUMN].tolist() == b[HALF_COLUMN].tolist()
    assert a[SPLIT_COLUMN].tolist() != c[SPLIT_COLUMN].tolist()


def test_exact_duplicates_stay_in_one_split(make_config, stages, synthetic_frame, write_csv):
    frame = synthetic_frame.copy()
    copies = frame.iloc[:60].copy()
    copies["account_id"] = np.arange(9000, 9060)  # same features and label, new ids
    data = write_csv(pd.concat([frame, copies, copies.assign(account_id=np.arange(9100, 9160))]))
    split = assignment(stages(make_config(data=str(data)), upto="split"))
    originals = split.set_index("__id").loc[frame["account_id"].iloc[:60], SPLIT_COLUMN].to_numpy()
    first = split.set_index("__id").loc[np.arange(9000, 9060), SPLIT_COLUMN].to_numpy()
    second = split.set_index("__id").loc[np.arange(9100, 9160), SPLIT_COLUMN].to_numpy()
    assert (originals == first).all() and (originals == second).all()


def test_group_column_never_spans_two_splits(make_config, stages, synthetic_frame, write_csv):
    frame = synthetic_frame.assign(customer=np.arange(len(synthetic_frame)) // 4)
    result = stages(make_config(data=str(write_csv(frame)), group="customer"), upto="split")
    split = assignment(result).merge(
        frame[["account_id", "customer"]], left_on="__id", right_on="account_id"
    )
    assert (split.groupby("customer")[SPLIT_COLUMN].nunique() == 1).all()
    assert "a value of customer kept in one split" in result["split"].method


def test_time_split_trains_on_the_past(make_config, stages, synthetic_frame, write_csv):
    frame = synthetic_frame.assign(
        day=pd.date_range("2024-01-01", periods=len(synthetic_frame), freq="D").astype(str)
    )
    config = make_config(data=str(write_csv(frame)), split_by="time:day", split_ratio_tolerance=0.2)
    split = assignment(stages(config, upto="split")).merge(
        frame[["account_id", "day"]], left_on="__id", right_on="account_id"
    )
    last_train = split.loc[split[SPLIT_COLUMN] == "train", "day"].max()
    first_validation = split.loc[split[SPLIT_COLUMN] == "validation", "day"].min()
    last_validation = split.loc[split[SPLIT_COLUMN] == "validation", "day"].max()
    first_test = split.loc[split[SPLIT_COLUMN] == "test", "day"].min()
    assert last_train < first_validation and last_validation < first_test


def test_too_small_data_fails_the_split_gate_plainly(
    make_config, stages, synthetic_frame, write_csv
):
    frame = pd.concat(
        [
            synthetic_frame[synthetic_frame.churned == "no"],
            synthetic_frame[synthetic_frame.churned == "yes"].iloc[:12],
        ]
    )
    with pytest.raises(
        GateFailed,
        match=r"'validation' split has \d positive rows; at least 5 are needed: "
        r"the data is too small",
    ) as info:
        stages(make_config(data=str(write_csv(frame))), upto="split")
    assert info.value.stage == "split"
