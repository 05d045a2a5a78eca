"""A corpus of bad inputs, table-driven: every case is refused with exit code 2 and a message
naming the cause, and leaves at most the failed run's run.json behind. Good controls beside them
pass. The cases run in this process against the session's test server; most are answered by the
header-level checks before any flow starts."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.predict import main as predict_main
from flows.train import main as train_main
from tests.conftest import SYNTHETIC, argv, predict_cli

FAST_FLAGS = argv(
    "--hidden 4 --epochs 1 --batch-size 64 --strategies baseline --no-saved-model --no-data-docs"
)


def base() -> pd.DataFrame:
    return pd.read_csv(SYNTHETIC)


@dataclass
class Case:
    name: str
    build: Callable[[Path], Path]  # writes the data file into the directory, returns its path
    message: str  # a regex the error output must match
    flags: list[str] = field(default_factory=list)
    standard: bool = (
        True  # add --target churned --positive yes --id account_id --categorical segment
    )


def csv(frame: pd.DataFrame, name: str = "data.csv") -> Callable[[Path], Path]:
    def build(directory: Path) -> Path:
        path = directory / name
        frame.to_csv(path, index=False)
        return path

    return build


def raw(content: bytes, name: str = "data.csv") -> Callable[[Path], Path]:
    def build(directory: Path) -> Path:
        path = directory / name
        path.write_bytes(content)
        return path

    return build


def changed(**columns) -> pd.DataFrame:
    frame = base()
    for column, change in columns.items():
        frame[column] = change(frame) if callable(change) else change
    return frame


def at(frame: pd.DataFrame, rows, column, value) -> pd.DataFrame:
    frame = frame.astype({column: object}) if not isinstance(value, int | float) else frame.copy()
    frame.loc[rows, column] = value
    return frame


GOOD_CSV = SYNTHETIC.read_bytes()

TRAINING_CASES = [
    # encoding and compression
    Case(
        "latin-1 text",
        raw(GOOD_CSV.replace(b"gold", "g\xf6ld".encode("latin-1"))),
        r"is not UTF-8 text",
    ),
    Case(
        "truncated gzip",
        raw(gzip.compress(GOOD_CSV)[:300], "data.csv.gz"),
        r"could not (read|be parsed)",
    ),
    Case(
        "gzip suffix, not gzip",
        raw(b"\x00\x01garbage" * 50, "data.csv.gz"),
        r"could not (read|be parsed)",
    ),
    Case(
        "corrupt gzip body",
        raw(gzip.compress(GOOD_CSV)[:40] + b"\xff" * 400, "data.csv.gz"),
        r"could not (read|be parsed)",
    ),
    Case("parquet that is not parquet", raw(b"PAR1 not really", "data.parquet"), r"could not read"),
    Case(
        "unsupported suffix", raw(GOOD_CSV, "data.xlsx"), r"unsupported data file type: data.xlsx"
    ),
    # files
    Case("empty file", raw(b""), r"is empty"),
    Case("blank lines only", raw(b"\n\n  \n"), r"no header line|is empty"),
    Case("missing file", lambda d: d / "absent.csv", r"data file not found: .*absent.csv"),
    Case("directory as data", lambda d: (d / "folder").mkdir() or d / "folder", r"is not a file"),
    # header
    Case(
        "duplicate column names",
        raw(GOOD_CSV.replace(b"score_b", b"score_a", 1)),
        r"duplicate column names: 'score_a'",
    ),
    Case(
        "duplicated target column",
        raw(GOOD_CSV.replace(b"segment", b"churned", 1)),
        r"duplicate column names: 'churned'",
    ),
    Case(
        "reserved name __row", csv(base().rename(columns={"age": "__row"})), r"'__row' are reserved"
    ),
    Case(
        "reserved name __split",
        csv(base().rename(columns={"age": "__split"})),
        r"'__split' are reserved",
    ),
    Case(
        "reserved name __half",
        csv(base().rename(columns={"age": "__half"})),
        r"'__half' are reserved",
    ),
    Case("header only", csv(base().iloc[:0]), r"the table has 0 rows|header but no rows"),
    Case(
        "target column missing",
        csv(base().drop(columns="churned")),
        r"--target: column\(s\) 'churned' not found",
    ),
    Case(
        "id column missing",
        csv(base().drop(columns="account_id")),
        r"--id: column\(s\) 'account_id' not found",
    ),
    Case(
        "categorical column missing",
        csv(base().drop(columns="segment")),
        r"--categorical: column\(s\) 'segment' not found",
    ),
    Case(
        "drop column missing",
        csv(base()),
        r"--drop: column\(s\) 'nope' not found",
        ["--drop", "nope"],
    ),
    Case(
        "group column missing",
        csv(base()),
        r"--group: column\(s\) 'household' not found",
        ["--group", "household"],
    ),
    Case(
        "time column missing",
        csv(base()),
        r"--split-by: column\(s\) 'when' not found",
        ["--split-by", "time:when"],
    ),
    Case(
        "no target given",
        csv(base()),
        r"no target column given",
        ["--id", "account_id"],
        standard=False,
    ),
    # target
    Case("one class", csv(changed(churned="no")), r"column 'churned' has 1 distinct values"),
    Case(
        "three classes",
        csv(at(base(), [0, 1, 2], "churned", "maybe")),
        r"column 'churned' has 3 distinct values",
    ),
    Case(
        "missing labels",
        csv(at(base(), [3, 5], "churned", None)),
        r"column 'churned' has 2 missing values",
    ),
    Case(
        "too few positives",
        csv(base().drop(index=base().index[base().churned == "yes"][4:])),
        r"smallest class has 4 rows",
    ),
    Case(
        "positive label absent",
        csv(base()),
        r"positive label 'maybe' is not a value",
        ["--positive", "maybe"],
    ),
    Case(
        "tied classes",
        csv(changed(churned=lambda f: np.where(np.arange(len(f)) % 2, "yes", "no"))),
        r"classes are tied",
        argv("--target churned --id account_id --categorical segment"),
        standard=False,
    ),
    Case(
        "boolean target, unknown positive",
        csv(changed(churned=lambda f: f.churned == "yes")),
        r"positive label 'maybe' is not a value",
        ["--positive", "maybe"],
    ),
    # ids
    Case(
        "repeated ids",
        csv(at(base(), [1], "account_id", 1000)),
        r"column 'account_id' has 2 rows with repeated values",
    ),
    Case(
        "missing ids",
        csv(at(base(), [7, 9], "account_id", np.nan)),
        r"id column 'account_id' is empty in 2 row",
    ),
    # numerics
    Case(
        "text in a numeric column",
        csv(at(base(), [4], "age", "forty")),
        r"column 'age' is not numeric",
    ),
    Case(
        "inf in a feature",
        csv(at(base(), [6], "amount", np.inf)),
        r"column 'amount' has 1 value\(s\) that are not finite",
    ),
    Case(
        "beyond float32",
        csv(at(base(), [6, 8], "score_a", 1e300)),
        r"column 'score_a' has 2 value\(s\) that are not finite",
    ),
    Case(
        "missing feature values",
        csv(at(base(), [1, 2], "amount", np.nan)),
        r"column 'amount' has 2 missing values",
    ),
    Case(
        "copy of the target",
        csv(changed(leak=lambda f: f.churned)),
        r"'leak' take two values that map one-to-one",
        ["--categorical", "segment,leak"],
    ),
    Case(
        "target recoded 0/1",
        csv(changed(leak=lambda f: (f.churned == "yes").astype(int))),
        r"'leak' take two values",
    ),
    # categoricals
    Case(
        "too many levels",
        csv(changed(segment=lambda f: [f"s{i}" for i in range(len(f))])),
        r"'segment' has more than 50 levels",
        ["--max-categories", "50"],
    ),
    # time
    Case(
        "missing times",
        csv(
            changed(
                when=lambda f: (
                    pd.Series(pd.date_range("2024-01-01", periods=len(f)))
                    .where(np.arange(len(f)) % 20 != 0)
                    .astype(str)
                    .replace("NaT", "")
                )
            )
        ),
        r"rows have no time value",
        ["--split-by", "time:when", "--split-ratio-tolerance", "0.5"],
    ),
    Case(
        "unparseable times",
        csv(changed(when=lambda f: ["soon"] * len(f))),
        r"not dates or times",
        ["--split-by", "time:when"],
    ),
    # settings
    Case("bad split shares", csv(base()), r"--split", ["--split", "0.5,0.5"]),
    Case(
        "split shares not numbers",
        csv(base()),
        r"--split expects three numbers",
        ["--split", "a,b,c"],
    ),
    Case("too few bootstrap resamples", csv(base()), r"use at least 1000", ["--bootstrap", "100"]),
    Case("unsafe model name", csv(base()), r"not a safe name", ["--model-name", "../escape"]),
    Case("unknown strategy", csv(base()), r"unknown strategy: magic", ["--strategies", "magic"]),
    Case("unknown objective", csv(base()), r"unknown objective", ["--objective", "accuracy"]),
    Case(
        "bad memory budget", csv(base()), r"expected a positive size", ["--memory-budget", "lots"]
    ),
    Case(
        "split-by without time:",
        csv(base()),
        r"--split-by expects 'time:COLUMN'",
        ["--split-by", "when"],
    ),
    Case(
        "group and time together",
        csv(base()),
        r"cannot be combined",
        ["--group", "segment", "--split-by", "time:age"],
    ),
    Case(
        "output is a file",
        csv(base()),
        r"--runs-dir .* is a file, not a directory",
        ["--runs-dir", "{dir}/data.csv/runs"],
    ),
    Case(
        "too few positives per validation half",
        csv(base().drop(index=base().index[base().churned == "yes"][16:])),
        r"half of the validation split has \d positive rows",
        ["--min-class-count", "5"],
    ),
]


def leftovers(output: Path) -> list[Path]:
    """Everything a refused run left under --runs-dir, other than a failed run's record: its
    run.json and its gates' Great Expectations project (gx/)."""
    if not output.exists():
        return []
    failed = {
        path.parent
        for path in output.rglob("run.json")
        if json.loads(path.read_text())["status"] == "failed"
    }
    return [
        path
        for path in output.rglob("*")
        if path.is_file()
        and not (path.name == "run.json" and path.parent in failed)
        and not any(path.is_relative_to(run / "gx") for run in failed)
    ]


def test_the_corpus_is_large_enough():
    assert len(TRAINING_CASES) >= 40 and len(PREDICT_CASES) >= 15
    assert len({c.name for c in TRAINING_CASES}) == len(TRAINING_CASES)


@pytest.mark.parametrize("case", TRAINING_CASES, ids=lambda c: c.name)
def test_bad_training_input_is_refused_by_name(case, tmp_path, capsys):
    data = case.build(tmp_path)
    output = tmp_path / "runs"
    flags = [f.replace("{dir}", str(tmp_path)) for f in case.flags]
    standard = argv("--target churned --positive yes --id account_id --categorical segment")
    if not case.standard:
        standard = []
    args = argv(
        "--data {data} --runs-dir {output}",
        *FAST_FLAGS,
        *standard,
        *flags,
        data=data,
        output=output,
    )
    code = train_main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search(case.message, err, re.S), err
    if "--runs-dir" not in case.flags:
        assert leftovers(output) == []


# --- prediction -----------------------------------------------------------------------------------


@pytest.fixture
def model(tiny_model):
    return tiny_model


PREDICT_CASES = [
    Case("missing file", lambda d: d / "absent.csv", r"data file not found"),
    Case("directory as data", lambda d: (d / "folder").mkdir() or d / "folder", r"is not a file"),
    Case("empty file", raw(b""), r"is empty"),
    Case("header only", csv(base().iloc[:0]), r"header but no rows"),
    Case(
        "truncated gzip",
        raw(gzip.compress(GOOD_CSV)[:300], "data.csv.gz"),
        r"could not (read|be parsed)",
    ),
    Case(
        "duplicate column names",
        raw(GOOD_CSV.replace(b"score_b", b"score_a", 1)),
        r"duplicate column names",
    ),
    Case(
        "latin-1 text",
        raw(GOOD_CSV.replace(b"gold", "g\xf6ld".encode("latin-1"))),
        r"is not UTF-8 text",
    ),
    Case(
        "missing feature column", csv(base().drop(columns="amount")), r"column 'amount' not found"
    ),
    Case(
        "text in a numeric column",
        csv(at(base(), [4], "age", "forty")),
        r"column 'age' is not numeric",
    ),
    Case(
        "inf",
        csv(at(base(), [3], "amount", np.inf)),
        r"1 of 400 rows .* cannot be scored.*amount: not a finite number",
    ),
    Case(
        "beyond float32",
        csv(at(base(), [3, 4], "score_a", -1e300)),
        r"2 of 400 rows .*score_a: not a finite number",
    ),
    Case(
        "missing value, no imputation",
        csv(at(base(), [9], "age", np.nan)),
        r"age: missing in 1 row",
    ),
    Case(
        "unseen level refused",
        csv(at(base(), [0, 1], "segment", "platinum")),
        r"segment: level not seen in training",
        ["--on-unseen", "refuse"],
    ),
    Case("out is a directory", csv(base()), r"is a directory", ["--out", "{dir}"]),
    Case("out is the input", csv(base()), r"is the input file", ["--out", "{dir}/data.csv"]),
    Case(
        "out names no format",
        csv(base()),
        r"scored\.txt: the file's name sets its format; end it in \.csv, \.csv\.gz or \.parquet",
        ["--out", "{dir}/scored.txt"],
    ),
    Case("unknown model name", csv(base()), r"no model at 'nope'", ["--model", "nope"]),
    Case(
        "model name with a path escape",
        csv(base()),
        r"no model at '\.\./nope'",
        ["--model", "../nope"],
    ),
]


@pytest.mark.parametrize("case", PREDICT_CASES, ids=lambda c: c.name)
def test_bad_prediction_input_is_refused_by_name(case, model, tmp_path, capsys):
    data = case.build(tmp_path)
    out = tmp_path / "scored.parquet"
    flags = [f.replace("{dir}", str(tmp_path)) for f in case.flags]
    args = argv(
        "--model {model} --data {data} --out {out} --runs-dir {tmp_path}",
        *flags,
        model=model,
        data=data,
        out=out,
        tmp_path=tmp_path,
    )
    if "--model" in flags:
        args = args[2:]
    code = predict_main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search(case.message, err, re.S), err
    assert not out.exists() and not list(tmp_path.glob("*.rejects.csv"))


def test_good_controls_pass(model, tmp_path, capsys):
    """Beside the corpus: a clean file, a UTF-8 BOM with CRLF line ends, unseen levels scored
    and bad rows set aside with --on-bad-rows skip, CSV output, boolean labels round-tripping."""
    frame = base()
    data = tmp_path / "bom.csv"
    data.write_bytes(b"\xef\xbb\xbf" + frame.to_csv(index=False, lineterminator="\r\n").encode())
    out = tmp_path / "scored.csv"
    copied = tmp_path / "elsewhere" / "model"  # a complete model directory copied anywhere
    shutil.copytree(Path(model).resolve(), copied)
    assert predict_cli(copied, data, out) == 0
    capsys.readouterr()
    scored = pd.read_csv(out)
    assert len(scored) == 400 and np.isfinite(scored.probability).all()

    messy = at(at(frame, [0, 1], "segment", "platinum"), [5], "amount", np.inf)
    data = tmp_path / "messy.csv"
    messy.to_csv(data, index=False)
    out = tmp_path / "messy.parquet"
    assert predict_cli(model, data, out, "--on-bad-rows skip") == 0
    result = json.loads(capsys.readouterr().out)
    assert (
        result["rows"] == 399
        and result["rejected"] == 1
        and result["unseen_levels"] == {"segment": 2}
    )
    rejects = pd.read_csv(result["rejects"])
    assert (
        rejects["row"].tolist() == [5]
        and "amount: not a finite number" in rejects["reject_reason"][0]
    )
    assert len(pd.read_parquet(out)) == 399


def test_boolean_labels_and_integer_codes_round_trip(tmp_path, capsys):
    """A True/False target named with --positive true predicts booleans (not the positive label
    on every row); integer category codes keep their form when a missing value makes the
    training column float ('1', never '1.0'), so prediction files with int codes score."""
    rng = np.random.default_rng(0)
    frame = base().assign(
        churned=lambda f: f.churned == "yes", region=rng.integers(1, 4, 400).astype(float)
    )
    frame.loc[3, "region"] = np.nan
    data = tmp_path / "bool.csv"
    frame.to_csv(data, index=False)
    output = tmp_path / "runs"
    assert (
        train_main(
            argv(
                "--data {data} --target churned --positive true --id account_id --categorical "
                "segment,region --impute most_frequent --runs-dir {output}",
                *FAST_FLAGS,
                data=data,
                output=output,
            )
        )
        == 0
    )
    capsys.readouterr()
    new = frame.drop(index=3).astype({"region": int})
    new_data = tmp_path / "new.csv"
    new.to_csv(new_data, index=False)
    out = tmp_path / "scored.parquet"
    code = predict_cli(output / "latest" / "model", new_data, out, "--on-unseen refuse")
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["unseen_levels"] == {} and result["rows"] == 399
    scored = pd.read_parquet(out)
    assert scored["label"].dtype == bool
    assert (scored["label"] == scored["is_positive"]).all()


def test_class_labels_that_look_like_mathtext_still_get_a_report(tmp_path, capsys):
    """A label such as '$churn' used to crash matplotlib's mathtext after all the training."""
    data = tmp_path / "dollar.csv"
    base().assign(churned=lambda f: f.churned.map({"yes": "$churn", "no": "$stay$"})).to_csv(
        data, index=False
    )
    output = tmp_path / "runs"
    assert (
        train_main(
            argv(
                "--data {data} --target churned --positive $churn --id account_id --categorical "
                "segment --runs-dir {output}",
                *FAST_FLAGS,
                data=data,
                output=output,
            )
        )
        == 0
    )
    assert "$churn" in (output / "latest" / "report.html").read_text()
