"""Model quality: the strategy a run selects against gradient boosting and logistic regression.

For every dataset and resplit seed, `python -m flows.train` runs as a user would (all strategies,
defaults); the selected strategy's test PR-AUC is read from the run's leaderboard. Two comparators
are fitted on the run's own training split as ingested (before outlier handling) and scored on
the same test rows:

- HistGradientBoosting at its defaults, categoricals native;
- logistic regression: median imputation and standard scaling of numerics, one-hot categoricals,
  `max_iter=5000`.

Per dataset the figure is the mean over the resplits of selected / max(HGB, LR). A dataset counts
toward the median and the minimum only where max(HGB, LR) is at most SATURATED (a set every model
solves says nothing), and the list holds at most half synthetic sets. The data comes from
../shared/data (skipped when absent), from files that ship inside installed packages
(scikit-learn), and from seeded synthetic generators.
"""

from __future__ import annotations

import gzip
import io
import json
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SATURATED = 0.95
RESPLITS = 5


@dataclass(frozen=True)
class Dataset:
    """A benchmark dataset: how to write it as parquet and how a user would describe it."""

    name: str
    kind: str  # "real" | "synthetic"
    build: Callable[[], pd.DataFrame | None]  # None: not available on this machine
    target: str
    positive: str
    categorical: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # what a user of this data must say

    def args(self, path: Path) -> list[str]:
        args = ["--data", str(path), "--target", self.target, "--positive", self.positive]
        args += ["--categorical", ",".join(self.categorical)] if self.categorical else []
        return args + self.flags


def _shared(relative: str, **read: Any) -> pd.DataFrame | None:
    path = SHARED / relative
    return pd.read_csv(path, **read) if path.exists() else None


def _thin_positives(frame: pd.DataFrame | None, target: str, positive: Any, rate: float):
    """Keep every negative and a seeded share of the positives, so positives are `rate` of
    the rows: a rarer version of a real set."""
    if frame is None:
        return None
    pos = frame[frame[target] == positive]
    neg = frame[frame[target] != positive]
    keep = round(rate * len(neg) / (1 - rate))
    return pd.concat([neg, pos.sample(n=min(keep, len(pos)), random_state=0)]).sort_index()


def breast_cancer() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.data.copy()
    frame["diagnosis"] = np.where(data.target == 0, "M", "B")  # sklearn: 0 is malignant
    return frame


def insurance() -> pd.DataFrame | None:
    frame = _shared("insurance_cross_sell/train.csv.gz")
    return None if frame is None else frame.drop(columns="id")


BANK_CATEGORICAL = [
    "job",
    "marital",
    "education",
    "default",
    "housing",
    "loan",
    "contact",
    "month",
    "poutcome",
]


def bank() -> pd.DataFrame | None:
    return _shared("bank_marketing/bank-full.csv.gz", sep=";")


def creditcard() -> pd.DataFrame | None:
    return _shared("creditcard_subset/creditcard_7409.csv.gz")


def diabetes_top_decile() -> pd.DataFrame:
    """scikit-learn's diabetes data (442 patients): positive = disease progression in the top
    10% a year later."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes(as_frame=True, scaled=False)
    frame = data.data.copy()
    frame["progressed"] = (data.target >= data.target.quantile(0.9)).astype(int)
    return frame


def titanic() -> pd.DataFrame | None:
    """The Titanic passenger list (1,309 rows) that scikit-learn ships as OpenML test data."""
    import sklearn

    path = (
        Path(sklearn.__file__).parent
        / "datasets/tests/data/openml/id_40945/data-v1-dl-16826755.arff.gz"
    )
    if not path.exists():
        return None
    with gzip.open(path, "rt") as handle:
        text = handle.read()
    names = [line.split("'")[1] for line in text.splitlines() if line.startswith("@attribute")]
    body = text.split("@data", 1)[1]
    frame = pd.read_csv(io.StringIO(body), header=None, names=names, na_values="?")
    keep = ["pclass", "sex", "age", "sibsp", "parch", "fare", "embarked", "survived"]
    return frame[keep]  # boat and body record who survived: left out


def synthetic_heavy_tails(rows: int = 12_000, seed: int = 11) -> pd.DataFrame:
    """3% positives; numerics lognormal, Pareto and Cauchy-like, the signal in their logs and
    in an interaction: a plain standard scaler squashes most rows into a sliver."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(rows, 8))
    frame = pd.DataFrame(
        {
            "amount": np.exp(1.5 * z[:, 0] + 3),
            "balance": (rng.pareto(1.2, rows) + 1) * np.exp(0.8 * z[:, 1]),
            "ratio": z[:, 2] / np.maximum(np.abs(rng.normal(size=rows)), 0.05),
            "count": rng.poisson(np.exp(0.7 * z[:, 3] + 1)),
            **{f"noise_{i}": np.exp(rng.normal(size=rows) * 2) for i in range(4)},
        }
    )
    logit = 2.0 * z[:, 0] - 1.5 * z[:, 1] + 1.2 * z[:, 0] * z[:, 3] + 1.0 * np.tanh(z[:, 2])
    frame["fraud"] = _labels(logit, 0.03, rng)
    return frame


def synthetic_rare_categories(rows: int = 15_000, seed: int = 12) -> pd.DataFrame:
    """2% positives; a 300-level merchant code whose rare levels carry risk, a few numerics,
    and 3% of the labels flipped."""
    rng = np.random.default_rng(seed)
    levels = 300
    popularity = rng.zipf(1.6, size=levels).astype(float)
    merchant = rng.choice(levels, rows, p=popularity / popularity.sum())
    risk = rng.normal(0, 2.0, levels)
    z = rng.normal(size=(rows, 4))
    logit = risk[merchant] + 1.5 * z[:, 0] - 1.0 * z[:, 1] ** 2 + 0.8 * z[:, 2]
    y = _labels(logit, 0.02, rng)
    flip = rng.random(rows) < 0.03 * 0.02 / 0.5  # flips ~3% of the positives' worth of rows
    y = np.where(flip, 1 - y, y)
    return pd.DataFrame(
        {
            "merchant": np.char.add("m", merchant.astype(str)),
            "channel": rng.choice(["web", "app", "store", "phone"], rows, p=[0.5, 0.3, 0.15, 0.05]),
            "amount": np.round(np.exp(rng.normal(3, 1, rows) + 0.3 * z[:, 0]), 2),
            "x1": z[:, 1],
            "x2": z[:, 2],
            "x3": z[:, 3],
            "chargeback": y,
        }
    )


def synthetic_label_noise(rows: int = 6_000, seed: int = 13) -> pd.DataFrame:
    """5% positives from a smooth nonlinear rule over 12 correlated numerics, 10% of the
    positives relabelled negative and as many negatives relabelled positive."""
    rng = np.random.default_rng(seed)
    cov = 0.5 * np.ones((12, 12)) + 0.5 * np.eye(12)
    x = rng.multivariate_normal(np.zeros(12), cov, size=rows)
    logit = np.sin(1.5 * x[:, 0]) * 2 + x[:, 1] * x[:, 2] - np.abs(x[:, 3]) + 0.5 * x[:, 4]
    y = _labels(logit, 0.05, rng)
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    flip = max(1, len(positives) // 10)
    y[rng.choice(positives, flip, replace=False)] = 0
    y[rng.choice(negatives, flip, replace=False)] = 1
    frame = pd.DataFrame(x, columns=[f"s{i}" for i in range(12)])
    frame["churned"] = y
    return frame


def _labels(logit: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Bernoulli labels whose mean is about `rate`: the logit shifted to that prevalence."""
    low, high = -30.0, 30.0
    for _ in range(60):
        shift = (low + high) / 2
        if np.mean(1 / (1 + np.exp(-(logit + shift)))) > rate:
            high = shift
        else:
            low = shift
    return (rng.random(len(logit)) < 1 / (1 + np.exp(-(logit + low)))).astype(int)


INSURANCE_CODES = ["Region_Code", "Policy_Sales_Channel"]  # stored as floats, categories
INSURANCE_CATEGORICAL = ["Gender", "Vehicle_Age", "Vehicle_Damage", *INSURANCE_CODES]
DATASETS = [
    Dataset("wdbc", "real", breast_cancer, "diagnosis", "M"),
    Dataset("insurance", "real", insurance, "Response", "1", INSURANCE_CATEGORICAL),
    Dataset("creditcard", "real", creditcard, "Class", "1"),
    Dataset("bank", "real", bank, "y", "yes", BANK_CATEGORICAL),
    Dataset(
        "bank_3pct",
        "real",
        lambda: _thin_positives(bank(), "y", "yes", 0.03),
        "y",
        "yes",
        BANK_CATEGORICAL,
    ),
    Dataset("diabetes_top10", "real", diabetes_top_decile, "progressed", "1"),
    Dataset(
        "titanic", "real", titanic, "survived", "1", ["sex", "embarked"], ["--impute", "median"]
    ),
    Dataset("heavy_tails", "synthetic", synthetic_heavy_tails, "fraud", "1"),
    Dataset(
        "rare_categories",
        "synthetic",
        synthetic_rare_categories,
        "chargeback",
        "1",
        ["merchant", "channel"],
    ),
    Dataset("label_noise", "synthetic", synthetic_label_noise, "churned", "1"),
]


def comparators(frame: pd.DataFrame, dataset: Dataset, ids: pd.DataFrame) -> dict[str, float]:
    """Test PR-AUC of HistGradientBoosting and logistic regression fitted on the run's training
    rows as ingested (before outlier handling), scored on the run's test rows."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    features = [c for c in frame.columns if c != dataset.target]
    categorical = dataset.categorical
    numeric = [c for c in features if c not in categorical]
    as_objects = frame[features].copy()  # categoricals as text, missing as NaN (what
    for column in categorical:  # SimpleImputer and OneHotEncoder expect)
        text = as_objects[column].astype("string")
        as_objects[column] = text.astype(object).where(text.notna(), np.nan)
    x = as_objects.astype({c: "category" for c in categorical})
    y = (frame[dataset.target].astype(str) == dataset.positive).astype(int).to_numpy()
    rows = {name: ids.loc[ids.split == name, "__id"].to_numpy() for name in ("train", "test")}
    hgb = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
    steps = [("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric)]
    if categorical:
        encode = make_pipeline(
            SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")
        )
        steps.append(("cat", encode, categorical))
    lr = make_pipeline(ColumnTransformer(steps), LogisticRegression(max_iter=5000))
    scores = {}
    for name, model, inputs in (("hgb", hgb, x), ("lr", lr, as_objects)):
        model.fit(inputs.iloc[rows["train"]], y[rows["train"]])
        probability = model.predict_proba(inputs.iloc[rows["test"]])[:, 1]
        scores[name] = float(average_precision_score(y[rows["test"]], probability))
    return scores


def one_run(
    train: Callable[[Path, list[str]], dict[str, Any]],
    work: Path,
    dataset: Dataset,
    path: Path,
    frame: pd.DataFrame,
    seed: int,
    extra: list[str],
) -> dict[str, Any]:
    output = work / f"{path.stem}-{seed}"
    timing = train(output, [*dataset.args(path), "--seed", str(seed), *extra])
    run_dir = output / "latest"
    board = pd.read_csv(run_dir / "leaderboard.csv").set_index("strategy")
    selected = json.loads((run_dir / "metrics.json").read_text())["selected"]
    feature_set = json.loads((run_dir / "run.json").read_text())["feature_set"]
    ids = pd.read_parquet(Path(feature_set) / "ids.parquet")
    scores = comparators(frame, dataset, ids)
    networks = board[(board.index != "reference") & (board.status == "ok")]
    return {
        "seed": seed,
        "selected": selected,
        "selected_pr_auc": float(board.loc[selected, "pr_auc"]),
        "best_network_pr_auc": float(networks.pr_auc.max()),
        "reference_pr_auc": float(board.loc["reference", "pr_auc"])
        if "reference" in board.index
        else None,
        "hgb_pr_auc": scores["hgb"],
        "lr_pr_auc": scores["lr"],
        "ratio": float(board.loc[selected, "pr_auc"]) / max(scores.values()),
        "wall_s": timing["wall_s"],
        "pr_auc_by_part": pr_auc_by_part(run_dir, board[board.status == "ok"].index),
    }


def pr_auc_by_part(run_dir: Path, strategies: Iterable[str]) -> dict[str, dict[str, float]]:
    """Each branch's PR-AUC on the validation stop half, tuning half, both, and test: what a
    selection rule could have seen and what it would have got (the selection diagnosis in
    docs/quality.md)."""
    from tasks.evaluate import average_precision

    table = {}
    for name in strategies:
        rows = pd.read_parquet(run_dir / "branches" / name / "predictions.parquet")
        parts = {part: rows[rows.part == part] for part in ("stop", "tune", "test")}
        parts["validation"] = rows[rows.part != "test"]
        table[name] = {
            part: round(average_precision(p.y.to_numpy(), p.probability.to_numpy()), 5)
            for part, p in parts.items()
        }
    return table


def section_quality(
    train: Callable[[Path, list[str]], dict[str, Any]],
    work: Path,
    names: list[str] | None = None,
    resplits: int = RESPLITS,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """Every dataset (or those named), `resplits` seeds each; the per-dataset means and the
    median and minimum over the counted sets."""
    chosen = [d for d in DATASETS if names is None or d.name in names]
    per_dataset: dict[str, Any] = {}
    for dataset in chosen:
        frame = dataset.build()
        if frame is None:
            per_dataset[dataset.name] = {"skipped": "data not available on this machine"}
            continue
        frame = frame.reset_index(drop=True)
        path = work / f"quality-{len(per_dataset)}.parquet"
        frame.to_parquet(path, index=False)
        try:
            runs = [
                one_run(train, work, dataset, path, frame, seed, extra or [])
                for seed in range(resplits)
            ]
        except RuntimeError as exc:  # a failed run: the other datasets still count
            per_dataset[dataset.name] = {"failed": str(exc)[-1500:]}
            print(f"  {dataset.name} failed: {str(exc)[-600:]}", flush=True)
            continue
        best = statistics.mean(max(r["hgb_pr_auc"], r["lr_pr_auc"]) for r in runs)
        positives = (frame[dataset.target].astype(str) == dataset.positive).mean()
        per_dataset[dataset.name] = {
            "kind": dataset.kind,
            "rows": len(frame),
            "prevalence": round(float(positives), 4),
            "ratio": round(statistics.mean(r["ratio"] for r in runs), 4),
            "selected_pr_auc": round(statistics.mean(r["selected_pr_auc"] for r in runs), 4),
            "hgb_pr_auc": round(statistics.mean(r["hgb_pr_auc"] for r in runs), 4),
            "lr_pr_auc": round(statistics.mean(r["lr_pr_auc"] for r in runs), 4),
            "counted": best <= SATURATED,
            "runs": runs,
        }
        print("  " + row(dataset.name, per_dataset[dataset.name]), flush=True)
    counted = [e["ratio"] for e in per_dataset.values() if e.get("counted")]
    summary = {
        "counted datasets": len(counted),
        "median ratio selected / max(HGB, LR)": round(statistics.median(counted), 4)
        if counted
        else None,
        "minimum ratio": round(min(counted), 4) if counted else None,
    }
    return {"datasets": per_dataset, "summary": summary}


def row(name: str, entry: dict[str, Any]) -> str:
    if "skipped" in entry or "failed" in entry:
        return f"{name:<32} {'skipped' if 'skipped' in entry else 'failed'}"
    return (
        f"{name:<32} {entry['kind']:<9} {entry['rows']:>7} {entry['prevalence']:>6.3f} "
        f"{entry['selected_pr_auc']:>8.3f} {entry['hgb_pr_auc']:>6.3f} {entry['lr_pr_auc']:>6.3f} "
        f"{entry['ratio']:>6.3f} {'yes' if entry['counted'] else 'no':>7}"
    )


def print_quality(result: dict[str, Any]) -> None:
    if "datasets" not in result:
        print(f"quality: {result}")
        return
    print(
        f"\n{'dataset':<32} {'kind':<9} {'rows':>7} {'prev':>6} {'selected':>8} {'hgb':>6} "
        f"{'lr':>6} {'ratio':>6} {'counted':>7}"
    )
    for name, entry in result["datasets"].items():
        print(row(name, entry))
    for name, value in result["summary"].items():
        print(f"  {name}: {value}")


# --- ablations ------------------------------------------------------------------------------------
# Each ingredient of the default network switched off in turn (and a few alternatives), measured
# in one process on the stored features without the flow: the plain `baseline` and
# `class_weight` networks (trained side by side, as the flow trains them), the better of the two
# on the test rows against max(HGB, LR) on the same split. Cheaper than whole runs, so an
# ablation covers more resplits; what it isolates is the network, not the selection.
ABLATIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "standard scaling": {"numeric_transform": "standard"},
    "no step floors": {"min_steps": 0, "min_patience_steps": 0},
    "no linear path": {"linear_skip": False},
    "before (all three off)": {
        "numeric_transform": "standard",
        "min_steps": 0,
        "min_patience_steps": 0,
        "linear_skip": False,
    },
    "learning rate 3e-3": {"learning_rate": 0.003},
    "dropout 0.4": {"dropout": 0.4},
    "hidden 128/64": {"hidden": [128, 64]},
    "no weight decay": {"weight_decay": 0.0},
    "weight decay 5": {"weight_decay": 5.0},
    "weight decay 1": {"weight_decay": 1.0},
    "cosine schedule": {"lr_schedule": "cosine"},
    "no numeric embeddings": {"numeric_embedding": "none"},
    "periodic embeddings": {"numeric_embedding": "periodic"},  # whatever the size
    "periodic + cosine": {"numeric_embedding": "periodic", "lr_schedule": "cosine"},
    "robust scaling": {"numeric_transform": "robust"},
    "one-hot categories": {"category_embedding": "one-hot"},
    "linear only": {"hidden": []},
    "search 4": {"search": 4},  # chosen per strategy on the stop half (tasks/search.py)
}
ABLATION_STRATEGIES = ["baseline", "class_weight"]


def _ablation_run(work: Path, settings: dict[str, Any]):
    """Features and the two networks for one resplit, in this process; (feature set, records)."""
    from flows.train import IN_MEMORY as stages
    from tasks.config import TrainConfig
    from tasks.train import train_stack

    config = TrainConfig(**settings)
    work.mkdir(parents=True, exist_ok=True)
    ingested = stages.ingest.fn(config, work)
    split = stages.split.fn(config, ingested, work)
    outliers = stages.handle_outliers.fn(config, ingested, split, work)
    feature_set = stages.build_features.fn(config, ingested, split, outliers)
    (work / "branches").mkdir(exist_ok=True)
    records = train_stack.fn(ABLATION_STRATEGIES, feature_set, config, str(work / "branches"))
    return feature_set, records


def ablation(
    work: Path, names: list[str] | None, resplits: int, variants: list[str] | None = None
) -> dict[str, Any]:
    """ratio = best of the two networks / max(HGB, LR), mean over resplits, per dataset and
    variant (see ABLATIONS)."""
    import logging

    from tasks.model import configure_tensorflow

    configure_tensorflow(1)  # what the flow uses
    logging.disable(logging.WARNING)
    chosen = [d for d in DATASETS if names is None or d.name in names]
    table: dict[str, dict[str, Any]] = {}
    f1_table: dict[str, dict[str, Any]] = {}
    for dataset in chosen:
        frame = dataset.build()
        if frame is None:
            continue
        frame = frame.reset_index(drop=True)
        path = work / f"ablation-{dataset.name}.parquet"
        frame.to_parquet(path, index=False)
        flags = dict(zip(dataset.flags[::2], dataset.flags[1::2], strict=True))
        base = {
            "data": str(path),
            "target": dataset.target,
            "positive": dataset.positive,
            "categorical": dataset.categorical,
            "output": str(work / "ablation-out"),
            "store": str(work / "ablation-store"),
        } | {k.lstrip("-").replace("-", "_"): v for k, v in flags.items()}
        comparators_by_seed: dict[int, dict[str, float]] = {}
        for variant, changes in ABLATIONS.items():
            if variants and variant not in variants:
                continue
            ratios, f1s = [], []
            for seed in range(resplits):
                run_dir = work / "ablation" / dataset.name / variant.replace(" ", "_") / str(seed)
                settings = base | {"seed": seed} | changes
                feature_set, records = _ablation_run(run_dir, settings)
                if seed not in comparators_by_seed:
                    ids = pd.read_parquet(Path(feature_set.path) / "ids.parquet")
                    comparators_by_seed[seed] = comparators(frame, dataset, ids)
                best = max(r["pr_auc"] for r in records if r["status"] == "ok")
                ratios.append(best / max(comparators_by_seed[seed].values()))
                f1s.append(next(r["f1"] for r in records if r["strategy"] == "baseline"))
            table.setdefault(dataset.name, {})[variant] = round(statistics.mean(ratios), 3)
            f1_table.setdefault(dataset.name, {})[variant] = round(statistics.mean(f1s), 3)
            print(
                f"  {dataset.name:<16} {variant:<24} {table[dataset.name][variant]:.3f}"
                f"  (baseline test F1 {f1_table[dataset.name][variant]:.3f})",
                flush=True,
            )
    return {
        "resplits": resplits,
        "ratio best network / max(HGB, LR)": table,
        "baseline test F1 at its tuned threshold": f1_table,
    }
