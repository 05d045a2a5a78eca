import gzip

import pandas as pd
import pytest

from tasks.datasets import BUILTINS
from tasks.errors import DataInputError
from tasks.io import detect_separator, load_source
from tasks.storage import atomic_path

KAGGLE_SHAPE = (
    "id,diagnosis,radius_mean,texture_mean,\r\n"
    "842302,M,17.99,10.38,\r\n"
    "842517,M,20.57,17.77,\r\n"
    "84300903,B,19.69,21.25,\r\n"
)


def test_trailing_comma_crlf_file_loads_like_the_kaggle_file(write_csv):
    loaded = load_source(str(write_csv(KAGGLE_SHAPE)))
    assert list(loaded.frame.columns) == ["id", "diagnosis", "radius_mean", "texture_mean"]
    assert loaded.frame["radius_mean"].tolist() == [17.99, 20.57, 19.69]
    assert any("Unnamed: 4" in note for note in loaded.notes)


def test_gzip_and_semicolons_are_detected(tmp_path):
    path = tmp_path / "bank.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write('"age";"job";"y"\n30;"admin.";"no"\n41;"technician";"yes"\n')
    assert detect_separator(path) == ";"
    frame = load_source(str(path)).frame
    assert list(frame.columns) == ["age", "job", "y"] and frame["job"].tolist() == [
        "admin.",
        "technician",
    ]


def test_parquet_round_trip_and_source_hash(tmp_path, synthetic_frame):
    path = tmp_path / "data.parquet"
    synthetic_frame.to_parquet(path)
    loaded = load_source(str(path))
    pd.testing.assert_frame_equal(loaded.frame, synthetic_frame, check_dtype=False)
    assert loaded.source_sha256 == load_source(str(path)).source_sha256


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (
            None,
            "missing.csv",
            "data file not found: .*missing.csv .*built-in datasets: breast_cancer",
        ),
        ("", "empty.csv", "data file .*empty.csv is empty"),
        ("\n\n", "blank.csv", "is empty"),
        ("not parquet at all", "broken.parquet", "could not read parquet file .*broken.parquet"),
        ("a,b\n1,2\n", "data.xlsx", "unsupported data file type"),
    ],
    ids=["missing", "empty", "blank-lines", "unreadable-parquet", "unsupported"],
)
def test_bad_files_get_a_specific_error(tmp_path, content, name, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataInputError, match=message):
        load_source(str(path))


def test_builtin_breast_cancer_matches_the_kaggle_layout():
    frame = BUILTINS["breast_cancer"].load()
    assert frame.shape == (569, 32)
    assert list(frame.columns[:4]) == ["id", "diagnosis", "radius_mean", "texture_mean"]
    assert "concave points_worst" in frame.columns and "fractal_dimension_se" in frame.columns
    assert frame["diagnosis"].value_counts().to_dict() == {"B": 357, "M": 212}
    # first Kaggle row: 842302, M, radius_mean 17.99
    assert frame.loc[0, "diagnosis"] == "M" and frame.loc[0, "radius_mean"] == 17.99


def test_atomic_path_leaves_nothing_when_the_write_fails(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
