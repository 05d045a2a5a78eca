"""The real datasets in ../shared/data load and pass the gates. Skipped when absent."""

import json
from pathlib import Path

import pytest

from flows.train import train_flow
from tasks.config import TrainConfig
from tasks.ingest import ingest
from tests.conftest import FAST, needs_shared

pytestmark = pytest.mark.shared_data


def test_kaggle_breast_cancer_file_trains_end_to_end(tmp_path):
    path = needs_shared("breast_cancer/data.csv")
    assert (
        b"\r\n" in path.read_bytes()[:2000]
    )  # the shape this test is about: CRLF + trailing comma
    config = TrainConfig(
        data=str(path),
        target="diagnosis",
        id="id",
        runs_dir=str(tmp_path / "runs"),
        strategies=["baseline", "class_weight"],
        **FAST,
    )
    result = train_flow(config)
    manifest = result.feature_set.manifest
    assert manifest["positive_label"] == "M" and len(manifest["features"]["numeric"]) == 30
    assert any("Unnamed: 32" in note for note in manifest["ingest"]["notes"])
    assert manifest["ingest"]["class_counts"] == {"M": 212, "B": 357}
    seed_rule = manifest["outliers"]["seed_rule_removed"]
    assert seed_rule["M"]["share"] == pytest.approx(0.47, abs=0.005)
    metrics = json.loads(Path(result.metrics_path).read_text())
    assert all(r["status"] == "ok" for r in metrics["strategies"])


def test_bank_marketing_semicolons_and_categoricals(tmp_path):
    path = needs_shared("bank_marketing/bank-full.csv.gz")
    config = TrainConfig(
        data=str(path),
        target="y",
        positive="yes",
        runs_dir=str(tmp_path),
        categorical="job,marital,education,default,housing,loan,contact,month,poutcome",
    )
    work = tmp_path / "w"
    work.mkdir()
    result = ingest.fn(config, work)
    assert result.n_rows == 45211 and result.notes[0] == "delimiter ';'"
    assert result.class_counts["yes"] == 5289
    assert len(result.roles.categorical) == 9 and "age" in result.roles.numeric


def test_credit_card_subset_ingests(tmp_path):
    path = needs_shared("creditcard_subset/creditcard_7409.csv.gz")
    config = TrainConfig(data=str(path), target="Class", positive="1", runs_dir=str(tmp_path))
    work = tmp_path / "w"
    work.mkdir()
    result = ingest.fn(config, work)
    assert result.class_counts == {"1": 492, "0": 6917}
    assert len(result.roles.numeric) == 30
