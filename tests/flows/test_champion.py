"""Champion / challenger decisions, the registry history, and the champion CLI."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.champion import main as champion_main
from flows.train import train_flow
from tests.conftest import SYNTHETIC, argv, fast_config

BASELINE_ONLY = {"strategies": ["baseline"], "bootstrap": 1000}


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    """Three runs of one model name: first (promoted), an identical rerun (kept), and one with a
    negative promotion margin (promoted)."""
    output = tmp_path_factory.mktemp("lineage") / "runs"
    first = train_flow(fast_config(output, **BASELINE_ONLY))
    same = train_flow(fast_config(output, **BASELINE_ONLY))
    forced = train_flow(fast_config(output, **BASELINE_ONLY, promote_margin=-1.0))
    return output, first, same, forced


def registry(output):
    return json.loads((Path(output) / "registry" / "synthetic-churned.json").read_text())


def decision(result):
    return json.loads((Path(result.run_dir) / "run.json").read_text())["champion_decision"]


def test_an_identical_challenger_is_not_promoted(lineage):
    _, first, same, _ = lineage
    d = decision(same)
    assert d["action"] == "keep" and d["champion_run_id"] == first.run_id
    assert d["comparison"]["pr_auc_difference"] == 0.0
    assert d["comparison"]["pr_auc_interval"] == {"low": 0.0, "high": 0.0}
    assert "lower bound +0.0000 <= margin 0" in d["reason"]
    # rows neither model trained on: the test split, minus the champion's training ids
    # (none overlap)
    assert d["rows"] == 80
    assert same.registry["decision"] == "kept_champion"


def test_a_challenger_clearing_the_margin_is_promoted(lineage):
    output, first, same, forced = lineage
    d = decision(forced)
    assert d["action"] == "promote" and "> margin -1" in d["reason"]
    history = registry(output)["history"]
    assert [(e["run_id"], e["event"]) for e in history] == [
        (first.run_id, "promoted"),
        (same.run_id, "kept_champion"),
        (forced.run_id, "promoted"),
    ]
    assert history[2]["interval"]["low"] <= history[2]["interval"]["high"]
    assert registry(output)["champion"]["run_id"] == forced.run_id


def test_the_decision_is_in_the_report_and_an_artifact(lineage):
    _, _, same, _ = lineage
    html = Path(same.report_path).read_text()
    assert 'id="champion"' in html and "keep" in html and 'id="drift"' in html


def test_schema_change_promotes_with_that_reason(lineage, tmp_path):
    output, *_ = lineage
    frame = pd.read_csv(SYNTHETIC).drop(columns=["score_b"])
    data = tmp_path / "synthetic.csv"  # same name -> same registry entry
    frame.to_csv(data, index=False)
    result = train_flow(fast_config(output, data=str(data), **BASELINE_ONLY))
    d = decision(result)
    assert d["action"] == "promote" and d["reason"] == "schema_changed"
    assert any("score_b" in line for line in d["details"])
    # restore the previous champion for the CLI tests
    assert champion_main(["--runs-dir", str(output), "rollback", "synthetic-churned"]) == 0
    assert registry(output)["champion"]["run_id"] != result.run_id


def champion(output: Path, command: str, **values: object) -> int:
    """`python -m flows.champion --runs-dir DIR COMMAND...` in this process."""
    return champion_main(argv("--runs-dir {output} " + command, output=output, **values))


def test_champion_cli_list_show_rollback_and_set_threshold(lineage, capsys):
    output, first, _, forced = lineage
    assert champion_main(["--runs-dir", str(output), "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["name"] == "synthetic-churned"

    assert champion(output, "rollback synthetic-churned --to {run}", run=first.run_id) == 0
    capsys.readouterr()
    assert registry(output)["champion"]["run_id"] == first.run_id
    assert registry(output)["history"][-1]["event"] == "rolled_back_to"

    assert champion(output, "set-threshold synthetic-churned --objective fbeta:2") == 0
    changed = json.loads(capsys.readouterr().out)
    # a new model version beside the old one; the old one is untouched (rollback target)
    old_meta = json.loads((Path(first.model_dir) / "model.json").read_text())
    assert old_meta["threshold_objective"] == "f1" and "version" not in old_meta
    new_dir = Path(changed["model_dir"])
    assert new_dir == Path(first.run_dir) / "model-v2" and changed["version"] == 2
    meta = json.loads((new_dir / "model.json").read_text())
    assert meta["threshold"] == changed["threshold"] and meta["threshold_objective"] == "fbeta:2"
    assert meta["threshold_history"][-1]["objective"] == "f1"
    assert (new_dir / "MODEL_CARD.md").is_file() and f"{meta['threshold']:.6g}" in (
        new_dir / "MODEL_CARD.md"
    ).read_text()
    # everything the threshold touches is recomputed from the predictions in the model
    evaluation = pd.read_parquet(new_dir / "evaluation.parquet")
    test = evaluation[evaluation.part == "test"]
    flagged = test.probability >= meta["threshold"]
    cm = meta["metrics"]["test"]["confusion_matrix"]
    assert cm["tp"] + cm["fp"] == int(flagged.sum()) and cm["tp"] == int(
        (flagged & (test.y == 1)).sum()
    )
    assert registry(output)["champion"]["model_dir"] == str(new_dir)
    assert registry(output)["history"][-1]["event"] == "threshold_changed"
    # scoring the test rows with the new version reproduces its reference positive rate: no
    # false drift alarm from comparing two thresholds
    from tasks.predict import LoadedModel, reference_positive_rate

    assert reference_positive_rate(LoadedModel(new_dir).meta) == pytest.approx(flagged.mean())

    assert champion_main(["--runs-dir", str(output), "rollback", "synthetic-churned"]) == 0
    back = json.loads(capsys.readouterr().out)
    assert back["model_dir"] == first.model_dir  # the version before the threshold change
    assert (
        champion_main(["--runs-dir", str(output), "promote", "synthetic-churned", forced.run_id])
        == 0
    )
    capsys.readouterr()
    assert registry(output)["champion"]["run_id"] == forced.run_id
    assert registry(output)["history"][-1]["event"] == "promoted_manually"
    assert champion(output, "rollback synthetic-churned --to {run}", run=first.run_id) == 0
    capsys.readouterr()

    assert champion_main(["--runs-dir", str(output), "show", "synthetic-churned"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["champion"]["run_id"] == first.run_id

    assert (
        champion_main(
            argv("--runs-dir {output} rollback synthetic-churned --to nope", output=output)
        )
        == 2
    )
    assert "not in the registry's history" in capsys.readouterr().err
    assert champion_main(["--runs-dir", str(output), "show", "other"]) == 2


def test_retraining_checks_drift_against_the_champion(lineage, tmp_path):
    output, *_ = lineage
    shifted = pd.read_csv(SYNTHETIC)
    shifted["amount"] = shifted["amount"] * 20
    data = tmp_path / "synthetic.csv"  # same registry name as the champion
    shifted.to_csv(data, index=False)
    with pytest.raises(
        Exception,
        match=r"drifted from the champion's training data beyond the fail limits: amount \(psi",
    ):
        train_flow(fast_config(output, data=str(data), drift_action="fail", **BASELINE_ONLY))
    failed = sorted(
        p for p in Path(output).iterdir() if (p / "run.json").is_file() and not p.is_symlink()
    )[-1]
    run = json.loads((failed / "run.json").read_text())
    assert run["status"] == "failed" and run["failed_stage"] == "champion"
    assert sorted(p.name for p in failed.iterdir()) == ["gx", "run.json"]  # record, gates

    warned = train_flow(
        fast_config(output, data=str(data), **BASELINE_ONLY)
    )  # default: warn and go on
    drift = decision(warned)["drift"]
    rows = {r["feature"]: r for r in drift["table"]}
    assert drift["status"] == "fail" and rows["amount"]["status"] == "fail"
    assert (
        "predicted_positive_rate" in rows
        and rows["predicted_positive_rate"]["reference"] is not None
    )


def weekly_file(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


def weekly_config(output, data, **overrides):
    settings = {
        "id": None,
        "categorical": ["segment", "region"],
        "impute": "most_frequent",
        "model_name": "weekly",
        **BASELINE_ONLY,
    } | overrides
    return fast_config(output, data=str(data), **settings)


FEATURES = ["amount", "age", "score_a", "score_b", "has_card", "segment", "region"]


def test_without_ids_the_champion_is_never_scored_on_rows_it_saw(tmp_path):
    """No id column: the weekly file comes back re-sorted, with a column of integer codes now
    read as floats (one new row misses it) and new rows appended. Row positions no longer mean
    anything; every test row whose feature values the champion trained or tuned on is excluded,
    by the hash of the normalised row kept with its registry entry."""
    rng = np.random.default_rng(0)
    week1 = pd.read_csv(SYNTHETIC).drop(columns=["account_id"])
    week1["region"] = rng.integers(1, 4, len(week1))
    output = tmp_path / "runs"
    first = train_flow(weekly_config(output, weekly_file(tmp_path / "w1.csv", week1)))

    new = (
        pd.read_csv(SYNTHETIC)
        .drop(columns=["account_id"])
        .iloc[:60]
        .assign(amount=lambda f: f.amount + 1000, region=2.0)
    )
    new.loc[new.index[0], "region"] = np.nan
    week2 = pd.concat([week1.iloc[::-1].astype({"region": "float64"}), new], ignore_index=True)
    second = train_flow(
        weekly_config(
            output,
            weekly_file(tmp_path / "w2.csv", week2),
            promote_metric="objective",
            objective="fbeta:2",
        )
    )
    d = decision(second)

    def rows(result, frame, wanted):
        ids = pd.read_parquet(Path(result.feature_set.path) / "ids.parquet")
        return frame.iloc[ids.loc[wanted(ids.split), "__id"].to_numpy()]

    seen_by_champion = rows(first, week1, lambda s: s != "test")
    challenger_test = rows(second, week2, lambda s: s == "test").astype({"region": "Int64"})
    overlap = (
        challenger_test.reset_index()
        .merge(seen_by_champion.astype({"region": "Int64"}).drop_duplicates(), on=FEATURES)["index"]
        .nunique()
    )
    assert overlap > 0 and d["matched_by"] == "feature-row hash"
    assert d["test_rows_excluded_as_seen_by_champion"] == overlap
    assert d["rows"] + overlap + d["rows_the_champion_cannot_score"] == len(challenger_test)
    # a promotion never rests on fewer than 2,000 resamples; objectives tuned differently are
    # not compared on their objective
    assert d["comparison"]["n_boot"] == 2000 and d["metric"] == "pr_auc" and "fbeta:2" in d["note"]
    # the rows live with the registry, not in the servable model directory
    entry = registry_of(output, "weekly")["history"][0]
    assert (
        Path(entry["seen_rows"])
        == output / "registry" / "weekly" / "seen" / f"{first.run_id}.parquet"
    )
    assert not any("seen" in p.name for p in Path(first.model_dir).iterdir())


def registry_of(output, name):
    return json.loads((Path(output) / "registry" / f"{name}.json").read_text())


def test_new_levels_are_scored_and_an_unreadable_champion_is_kept(tmp_path):
    """An unseen category level is no schema change: the champion scores it with its unseen code
    and the bootstrap decides. A champion that cannot be read, or whose rows are unknown, is
    kept with the reason, never replaced blindly."""
    week1 = pd.read_csv(SYNTHETIC).assign(region=1)
    output = tmp_path / "runs"
    first = train_flow(
        weekly_config(output, weekly_file(tmp_path / "w1.csv", week1), id="account_id")
    )
    week2 = week1.copy()
    week2.loc[week2.index[::7], "segment"] = "platinum"  # never seen by the champion
    d = decision(
        train_flow(weekly_config(output, weekly_file(tmp_path / "w2.csv", week2), id="account_id"))
    )
    assert (
        d["reason"] != "schema_changed"
        and "comparison" in d
        and d["matched_by"] == "id column account_id"
    )

    champion = registry_of(output, "weekly")["champion"]
    assert champion["run_id"] == first.run_id
    # registered before entries kept their rows, and its store cleaned: nothing says which rows it
    # saw, so it is kept (with its feature set still there, its ids decide instead)
    Path(champion["seen_rows"]).unlink()
    shutil.rmtree(Path(first.feature_set.path))

    def retrain(name: str, rows: pd.DataFrame) -> dict:
        data = weekly_file(tmp_path / name, rows)
        return decision(
            train_flow(weekly_config(output, data, id="account_id", promote_margin=-1.0))
        )

    d = retrain("w4.csv", week1.iloc[:-2])
    assert d["action"] == "keep" and d["reason"] == "champion_rows_unknown"

    shutil.rmtree(Path(champion["model_dir"]))
    d = retrain("w5.csv", week1.iloc[:-3])
    assert d["action"] == "keep" and d["reason"] == "champion_unreadable"
    assert registry_of(output, "weekly")["champion"]["run_id"] == first.run_id


@pytest.mark.parametrize("batch", [7, 1_000_000])
def test_the_seen_rows_are_hashed_batch_by_batch_as_they_would_be_whole(
    batch, make_config, stages, tmp_path, monkeypatch
):
    """seen_rows reads and hashes the raw rows SEEN_ROWS_BATCH at a time (a 5M-row run held
    ~3 GB hashing them at once); its file is the whole-table computation's: every row outside
    the test split, in file order, with the same feature-row hash."""
    import tasks.champion as champion
    from tasks.ingest import HASH_COLUMN, ID_COLUMN, row_hashes

    result = stages(make_config())
    feature_set, raw_path = result["features"], result["ingest"].raw_path
    monkeypatch.setattr(champion, "SEEN_ROWS_BATCH", batch)
    written = pd.read_parquet(champion.seen_rows(raw_path, feature_set, tmp_path / "seen.parquet"))
    prep = feature_set.preprocessing()
    ids = pd.read_parquet(feature_set.location / "ids.parquet")
    raw = pd.read_parquet(raw_path)
    raw = raw[raw[ID_COLUMN].isin(ids.loc[ids.split != "test", ID_COLUMN])]
    assert len(written) == (ids.split != "test").sum() > 0
    assert written[ID_COLUMN].tolist() == raw[ID_COLUMN].tolist()
    expected = row_hashes(raw, prep.numeric, prep.categorical)
    assert np.array_equal(written[HASH_COLUMN].to_numpy(), expected)
