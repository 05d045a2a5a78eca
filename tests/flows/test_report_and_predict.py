"""Report, Prefect artifacts, exported model, registry and batch prediction."""

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.predict import main as predict_main
from flows.predict import predict_flow
from flows.train import train_flow
from tasks.compare import paired_bootstrap, reference_text, verdict_text
from tasks.strategies import STRATEGIES
from tasks.thresholds import parse_objective
from tests.conftest import SYNTHETIC, argv, fast_config, flow_run_artifacts, predict_cli


class Tables(HTMLParser):
    """Collects table rows by table id, and image sources."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self._table, self._row, self._cell = {}, [], None, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id", f"t{len(self.tables)}"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""
        elif tag == "img":
            self.images.append(attrs["src"])

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None


def test_report_is_self_contained_and_complete(full_run):
    _, result, metrics = full_run
    text = Path(result.report_path).read_text()
    parser = Tables()
    parser.feed(text)
    board = parser.tables["leaderboard"]
    assert len(board) - 1 == len(STRATEGIES) + 1  # header + every strategy + reference
    assert {row[0] for row in board[1:]} == {*STRATEGIES, "reference"}
    assert len(parser.images) >= 6 and all(
        src.startswith("data:image/png;base64,") for src in parser.images
    )
    assert "http://" not in text and "https://" not in text  # no network needed to view it
    assert {"gates", "outliers", "splits", "durations", "versions", "operating-points"} <= set(
        parser.tables
    )
    assert [row[0] for row in parser.tables["gates"][1:]] == [
        "raw",
        "split",
        "outliers",
        "features",
    ]
    assert metrics["selected"] in re.search(r'<p class="verdict".*?</p>', text, re.S).group(0)
    thresholds = [float(row[0]) for row in parser.tables["operating-points"][1:]]
    assert thresholds == sorted(thresholds) and 0.5 in thresholds


def test_artifacts_are_on_the_flow_run(full_run):
    _, result, metrics = full_run
    found = flow_run_artifacts(metrics["flow_run_id"])
    assert {"leaderboard", "verdict", "report"} <= set(found)
    table = found["leaderboard"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert len(rows) == len(STRATEGIES) + 1
    assert metrics["selected"] in found["verdict"].data
    # the answer box, as markdown the UI renders (issue 13 item 6)
    assert f"## Ship **{metrics['selected']}** at threshold **0." in found["verdict"].data
    assert "| precision | " in found["verdict"].data and "(95% interval " in found["verdict"].data
    assert found["report"].data.endswith("report.html") or "report.html" in found["report"].data


def test_exported_model_and_card(full_run):
    _, result, metrics = full_run
    model_dir = Path(result.model_dir)
    meta = json.loads((model_dir / "model.json").read_text())
    selected = next(r for r in metrics["strategies"] if r["strategy"] == metrics["selected"])
    assert meta["strategy"] == metrics["selected"] and meta["threshold"] == selected["threshold"]
    assert meta["positive_label"] == "yes" and meta["threshold_objective"] == "f1"
    assert meta["data_fingerprint"] == result.feature_set.fingerprint
    assert set(meta["schema"]["feature_stats"]) == {
        "amount",
        "age",
        "score_a",
        "score_b",
        "has_card",
        "segment",
    }
    assert meta["schema"]["feature_stats"]["segment"]["frequencies"].keys() == {
        "gold",
        "silver",
        "bronze",
    }
    assert (
        all((model_dir / m).is_file() for m in meta["members"])
        and (model_dir / "preprocessing.json").is_file()
    )
    card = (model_dir / "MODEL_CARD.md").read_text()  # the card travels with the model
    assert (model_dir.parent / "MODEL_CARD.md").read_text() == card  # and a copy beside it
    assert f"strategy **{metrics['selected']}**" in card and "validation tuning half" in card
    assert "## Known limits" in card


def test_registry_promotes_the_first_model_of_a_name(full_run):
    _, result, _ = full_run
    registry_file = Path(result.registry["registry"])
    assert registry_file.name == "synthetic-churned.json"
    registry = json.loads(registry_file.read_text())
    first = registry["history"][0]
    assert first["run_id"] == result.run_id and first["event"] == "promoted"
    assert first["reason"] == "first model of this name"


def raw_test_rows(result) -> pd.DataFrame:
    metrics = json.loads(Path(result.metrics_path).read_text())
    selected = pd.read_parquet(
        Path(result.run_dir) / "branches" / metrics["selected"] / "predictions.parquet"
    )
    test = selected[selected.part == "test"]
    raw = pd.read_csv(SYNTHETIC)
    return raw[raw.account_id.isin(test["__id"])], test


def test_predict_on_raw_test_rows_reproduces_the_runs_probabilities(full_run, tmp_path):
    config, result, _ = full_run
    raw, test = raw_test_rows(result)
    data = tmp_path / "test_rows.csv"
    raw.drop(columns="churned").to_csv(data, index=False)
    out = tmp_path / "scored.parquet"
    summary = predict_flow(
        model="synthetic-churned", data=str(data), out=str(out), runs_dir=config.runs_dir
    )
    assert Path(summary["model"]).resolve() == Path(result.model_dir).resolve()  # name -> champion
    scored = pd.read_parquet(out).set_index("account_id")
    expected = test.set_index("__id")["probability"]
    np.testing.assert_allclose(
        scored.loc[expected.index, "probability"], expected, atol=1e-6, rtol=0
    )
    meta = json.loads((Path(result.model_dir) / "model.json").read_text())
    assert (scored["is_positive"] == (scored["probability"] >= meta["threshold"])).all()
    assert set(scored["label"]) <= {"yes", "no"}
    assert (scored.loc[scored.is_positive, "label"] == "yes").all()


def test_predict_rejects_a_missing_column_naming_it(full_run, tmp_path, capsys):
    _, result, _ = full_run
    raw, _ = raw_test_rows(result)
    data = tmp_path / "no_age.csv"
    raw.drop(columns=["age"]).to_csv(data, index=False)
    out = tmp_path / "scored.parquet"
    code = predict_cli(result.model_dir, data, out)
    assert code == 2
    assert "column 'age' not found" in capsys.readouterr().err
    assert not out.exists()


def emitted(worker, prefix: str) -> list:
    """The project's events the flow runs handed to Prefect (Prefect's own asserting client)."""
    worker.wait_until_empty()
    return [e for e in worker._client.events if e.event.startswith(prefix)]


def test_predict_refuses_text_in_numbers_and_scores_or_refuses_unseen_levels(
    full_run, tmp_path, capsys, prefect_events
):
    _, result, _ = full_run
    raw, _ = raw_test_rows(result)
    unseen = raw.copy()
    unseen.loc[unseen.index[:3], "segment"] = "platinum"
    data = tmp_path / "unseen.csv"
    unseen.to_csv(data, index=False)
    out = tmp_path / "o.parquet"
    assert predict_cli(result.run_dir, data, out) == 0
    assert json.loads(capsys.readouterr().out)["unseen_levels"] == {"segment": 3}
    assert len(pd.read_parquet(out)) == len(unseen)
    out.unlink()
    code = predict_cli(result.run_dir, data, out, "--on-unseen refuse")
    assert (
        code == 2 and "segment: level not seen in training in 3 row(s)" in capsys.readouterr().err
    )
    assert not out.exists()

    bad = raw.copy()
    bad["amount"] = bad["amount"].astype(str)
    bad.loc[bad.index[0], "amount"] = "lots"
    bad.to_csv(data, index=False)
    code = predict_cli(result.run_dir, data, out)
    err = capsys.readouterr().err
    assert code == 2
    assert "column 'amount' is not numeric" in err
    (gate,) = emitted(prefect_events, "imbalance.gate.failed")
    assert gate.resource.id == "imbalance.model.synthetic-churned"
    assert (
        gate.payload["gate"] == "predict input"
        and "'amount' is not numeric" in gate.payload["reason"]
    )
    assert gate.payload["run_id"] == result.run_id
    assert {r.role for r in gate.related} >= {"flow-run", "flow"}


def test_unknown_model_name_is_a_clear_error(tmp_path, capsys):
    code = predict_main(
        argv(
            "--model nope --data {a0} --out {a1} --runs-dir {tmp_path}",
            a0=SYNTHETIC,
            a1=tmp_path / "o.parquet",
            tmp_path=tmp_path,
        )
    )
    assert code == 2 and "no model at 'nope'" in capsys.readouterr().err


def test_repeats_draw_new_splits_and_add_mean_and_sd(tmp_path):
    result = train_flow(
        fast_config(tmp_path / "runs", strategies=["baseline"], repeats=2, epochs=2)
    )
    metrics = json.loads(Path(result.metrics_path).read_text())
    assert len(metrics["strategies"]) == 2  # the ranked records are the first repeat's
    repeats = metrics["repeats"]
    assert repeats["baseline"]["repeats"] == 2 and repeats["baseline"]["repeats_ok"] == 2
    assert repeats["baseline"]["pr_auc"]["sd"] > 0  # different seeds, different models
    second = Path(result.run_dir) / "branches" / "repeat-1" / "baseline" / "predictions.parquet"
    first = Path(result.run_dir) / "branches" / "baseline" / "predictions.parquet"
    assert not np.array_equal(
        pd.read_parquet(first).probability, pd.read_parquet(second).probability
    )
    assert "new train/validation/test split" in Path(result.report_path).read_text()
    # each repeat draws its own split: the test rows differ, so split variance is in the spread
    first_test = set(pd.read_parquet(first).query("part == 'test'")["__id"])
    second_test = set(pd.read_parquet(second).query("part == 'test'")["__id"])
    assert first_test != second_test


def test_paired_bootstrap_and_verdict():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.2).astype(int)
    good = np.clip(0.6 * y + rng.normal(0.2, 0.15, 400), 0, 1)
    noise = rng.random(400)
    objective = parse_objective("f1")
    same = paired_bootstrap(y, good, good, 0.5, 0.5, objective, 300, 0)
    assert same["objective_interval"] == {"low": 0.0, "high": 0.0}
    assert "not distinguishable" in verdict_text("smote", same, "pr_auc")
    better = paired_bootstrap(y, good, noise, 0.5, 0.5, objective, 300, 0)
    assert better["objective_interval"]["low"] > 0 and better["pr_auc_interval"]["low"] > 0
    assert "reliably better" in verdict_text("smote", better, "pr_auc")
    assert better == paired_bootstrap(y, good, noise, 0.5, 0.5, objective, 300, 0)  # seeded


def test_the_verdict_says_plainly_when_the_reference_beats_every_network():
    """The reference is never shipped, but a user must see when it wins, by how much and with
    what certainty (the paired-bootstrap interval of selected minus reference)."""
    rng = np.random.default_rng(1)
    y = (rng.random(600) < 0.15).astype(int)
    strong = np.clip(0.7 * y + rng.normal(0.15, 0.1, 600), 0, 1)
    weak = np.clip(0.2 * y + rng.normal(0.3, 0.2, 600), 0, 1)
    objective = parse_objective("f1")
    losing = paired_bootstrap(y, weak, strong, 0.5, 0.5, objective, 300, 0)
    ranked = [
        {"strategy": "reference", "status": "ok", "pr_auc": 0.93},
        {"strategy": "smote", "status": "ok", "pr_auc": 0.81},
        {"strategy": "baseline", "status": "ok", "pr_auc": 0.84},
        {"strategy": "focal_loss", "status": "failed"},
    ]
    text = reference_text("smote", ranked, losing)
    assert "beats every network" in text and "0.9300" in text and "0.8100" in text
    assert "best network, baseline" in text and "reliably better" in text
    assert f"{losing['pr_auc_interval']['low']:+.4f}" in text
    ranked[2]["pr_auc"] = 0.95
    assert "beats every network" not in reference_text("smote", ranked, losing)
    assert reference_text("smote", ranked, None) == ""


def test_predict_checks_drift_warns_or_fails(full_run, tmp_path, capsys, prefect_events):
    _, result, _ = full_run
    raw, _ = raw_test_rows(result)
    data = tmp_path / "rows.csv"
    raw.to_csv(data, index=False)
    out = tmp_path / "ok.parquet"
    assert predict_cli(result.model_dir, data, out) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["drift"] in ("ok", "warn") and out.exists()
    unshifted = [] if summary["drift"] == "ok" else ["imbalance.drift.warn"]

    shifted = raw.assign(amount=raw.amount * 20, score_a=raw.score_a + 5)
    shifted_file = tmp_path / "shifted.csv"
    shifted.to_csv(shifted_file, index=False)
    warned = tmp_path / "warned.parquet"
    assert predict_cli(result.model_dir, shifted_file, warned) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (
        summary["drift"] == "fail"
        and {"amount", "score_a"} <= set(summary["drifted_features"])
        and warned.exists()
    )

    failed = tmp_path / "failed.parquet"
    code = predict_cli(result.model_dir, shifted_file, failed, "--drift-action fail")
    err = capsys.readouterr().err
    assert (
        code == 2
        and "drift beyond the fail limits; nothing was written" in err
        and "amount: psi" in err
    )
    assert not failed.exists()
    # both scorings of the shifted rows announced it, whatever the action
    drifted = emitted(prefect_events, "imbalance.drift.")
    assert [e.event for e in drifted] == unshifted + ["imbalance.drift.fail"] * 2
    drifted = drifted[len(unshifted) :]
    assert [e.payload["action"] for e in drifted] == ["warn", "fail"]
    assert {"amount", "score_a"} <= set(drifted[0].payload["features"])
    assert drifted[0].payload["model"] == "synthetic-churned"


def test_vectorised_bootstrap_metrics_match_scikit_learn():
    from sklearn.metrics import average_precision_score, f1_score

    from tasks.compare import resample_counts, weighted_objective
    from tasks.evaluate import SortedScores

    rng = np.random.default_rng(5)
    y = (rng.random(300) < 0.15).astype(float)
    scores = np.round(np.clip(0.4 * y + rng.normal(0.3, 0.2, 300), 0, 1), 2)  # ties included
    weights = resample_counts(np.random.default_rng(1), 300, 20)
    aps = SortedScores(y, scores).average_precision(weights)
    f1s = weighted_objective(weights, y, (scores >= 0.5).astype(float), parse_objective("f1"))
    for w, ap, f1 in zip(weights, aps, f1s, strict=True):
        rows = np.repeat(np.arange(300), w.astype(int))
        assert ap == pytest.approx(average_precision_score(y[rows], scores[rows]))
        assert f1 == pytest.approx(f1_score(y[rows], scores[rows] >= 0.5))


def test_labels_follow_their_rows_whatever_the_frames_index(tiny_model):
    """Regression: `score` built the labels as a Series on 0..n-1 and assigned it to a frame
    indexed like the input, so a subset of rows (the champion scores the rows it never saw)
    got labels of other rows, NaN where the indexes differ, and an integer target then failed
    the second insurance run ("cannot convert float NaN to integer")."""
    from tasks.predict import LoadedModel, score

    frame = pd.read_csv(SYNTHETIC)
    subset = frame.iloc[::-3]  # reversed, with gaps: nothing like 0..n-1
    model = LoadedModel(tiny_model)
    model.meta = model.meta | {"threshold": float(np.median(score(model, frame)["probability"]))}
    scored = score(model, subset)
    assert scored["label"].notna().all()
    meta = model.meta
    expected = np.where(scored["is_positive"], meta["positive_label"], meta["negative_label"])
    assert (scored["label"].to_numpy() == expected).all()
    assert scored["is_positive"].any() and not scored["is_positive"].all()
    again = score(model, subset.reset_index(drop=True))
    np.testing.assert_array_equal(scored["probability"], again["probability"])
