"""The raw gate passes good data and fails each kind of seeded bad data with a message that
names the column and the observed value."""

import numpy as np
import pytest

from tasks.errors import DataInputError, GateFailed
from tasks.ingest import ingest


def run_ingest(make_config, write_csv, frame, tmp_path, **overrides):
    config = make_config(data=str(write_csv(frame)), **overrides)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return ingest.fn(config, work)


def test_good_data_passes_and_reports_counts(make_config, tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    result = ingest.fn(make_config(), work)
    assert result.class_counts == {"yes": 60, "no": 340}
    assert result.roles.categorical == ["segment"]
    assert result.roles.numeric == ["amount", "age", "score_a", "score_b", "has_card"]
    assert result.gate["success"] and result.gate["expectations"] >= 10
    assert all(item["reason"] for item in result.gate["checked"])


def _bad(frame, case):
    frame = frame.copy()
    if case == "missing-target":
        return frame.drop(columns="churned")
    if case == "single-class":
        frame["churned"] = "no"
    elif case == "non-binary":
        frame.loc[:9, "churned"] = "maybe"
    elif case == "nan-target":
        frame.loc[[3, 5], "churned"] = np.nan
    elif case == "nan-feature":
        frame.loc[[1, 2, 7], "amount"] = np.nan
    elif case == "text-in-numeric":
        frame["age"] = frame["age"].astype(str)
        frame.loc[4, "age"] = "forty"
    elif case == "duplicate-ids":
        frame.loc[1, "account_id"] = frame.loc[0, "account_id"]
    elif case == "too-few-positives":
        keep = (
            frame[frame["churned"] == "no"].index.tolist()
            + frame[frame["churned"] == "yes"].index[:4].tolist()
        )
        frame = frame.loc[keep]
    return frame


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing-target", r"column 'churned' not found; columns are: account_id, amount"),
        ("single-class", r"column 'churned' has 1 distinct values \('no'\); expected 2"),
        (
            "non-binary",
            r"column 'churned' has 3 distinct values \('maybe', 'no', 'yes'\); expected 2",
        ),
        ("nan-target", r"column 'churned' has 2 missing values \(of 400 rows\)"),
        (
            "nan-feature",
            r"column 'amount' has 3 missing values \(of 400 rows\) \(fix the data or set --impute",
        ),
        ("text-in-numeric", r"column 'age' is not numeric \(dtype str"),
        ("duplicate-ids", r"column 'account_id' has 2 rows with repeated values"),
        ("too-few-positives", r"the smallest class has 4 rows; at least 10 are needed"),
    ],
)
def test_bad_data_fails_the_raw_gate_naming_the_problem(
    make_config, write_csv, synthetic_frame, tmp_path, case, message
):
    with pytest.raises(GateFailed, match=message) as info:
        run_ingest(make_config, write_csv, _bad(synthetic_frame, case), tmp_path)
    assert info.value.stage == "raw"
    assert not (tmp_path / "work" / "raw.parquet").exists()


def test_declared_columns_must_exist(make_config, write_csv, synthetic_frame, tmp_path):
    with pytest.raises(GateFailed, match="column 'region' not found"):
        run_ingest(
            make_config, write_csv, synthetic_frame, tmp_path, categorical=["segment", "region"]
        )


def test_header_only_file_fails_on_row_count(make_config, write_csv, synthetic_frame, tmp_path):
    with pytest.raises(GateFailed, match="the table has 0 rows; at least 20 are needed"):
        run_ingest(make_config, write_csv, synthetic_frame.iloc[:0], tmp_path)


def test_impute_allows_missing_features(make_config, write_csv, synthetic_frame, tmp_path):
    result = run_ingest(
        make_config, write_csv, _bad(synthetic_frame, "nan-feature"), tmp_path, impute="median"
    )
    assert result.gate["success"]


def test_positive_label_resolution(make_config, write_csv, synthetic_frame, tmp_path):
    assert (
        run_ingest(make_config, write_csv, synthetic_frame, tmp_path, positive=None).positive_label
        == "yes"
    )
    with pytest.raises(
        DataInputError,
        match="positive label 'Yes' is not a value of the target; values are: no, yes",
    ):
        run_ingest(make_config, write_csv, synthetic_frame, tmp_path, positive="Yes")
    tied = synthetic_frame.copy()
    tied["churned"] = np.where(np.arange(len(tied)) % 2, "yes", "no")
    with pytest.raises(DataInputError, match="classes are tied .*--positive"):
        run_ingest(make_config, write_csv, tied, tmp_path, positive=None)


def test_duplicates_are_reported(make_config, write_csv, synthetic_frame, tmp_path):
    frame = synthetic_frame.copy()
    extra = frame.iloc[[0, 1, 2]].copy()
    extra["account_id"] = [1, 2, 3]
    extra.iloc[2, extra.columns.get_loc("churned")] = (
        "yes" if extra.iloc[2]["churned"] == "no" else "no"
    )
    result = run_ingest(
        make_config, write_csv, __import__("pandas").concat([frame, extra]), tmp_path
    )
    assert result.exact_duplicate_rows == 2
    assert result.conflicting_duplicate_rows == 2  # the original row and its relabelled copy
