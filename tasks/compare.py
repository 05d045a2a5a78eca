"""Evidence for the verdict: paired bootstrap of metric differences on test rows, operating points
of the selected model, and mean ± sd over repeated seeds."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from upath import UPath

from tasks.config import TrainConfig
from tasks.evaluate import SortedScores, average_precision
from tasks.ingest import ID_COLUMN
from tasks.records import Comparison, SelectionEvidence
from tasks.storage import read_json, read_parquet, write_json
from tasks.strategies import REFERENCE
from tasks.thresholds import Objective, objective_values, parse_objective

log = logging.getLogger(__name__)

BOOTSTRAP_CELLS = 4_000_000  # resamples x rows evaluated at once: ~32 MB per float64 matrix


def bootstrap_chunk(n_rows: int) -> int:
    """Resamples per chunk: 64 on small test sets, fewer on large ones, so the few (chunk, n)
    matrices alive at once stay near BOOTSTRAP_CELLS cells (at 1M test rows, 4 per chunk)."""
    return int(min(64, max(1, BOOTSTRAP_CELLS // max(n_rows, 1))))


def resample_counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(size, n) counts, C-contiguous: how often each row is drawn in each bootstrap resample.

    The metrics run their sums along each resample's row of counts. float32 holds every count
    and every running sum of them exactly below 2**24 rows (a resample's counts sum to n), at
    half the memory traffic of float64; beyond that, float64. Draws are int32 below 2**31 rows
    (half the random bits of int64's)."""
    draws = rng.integers(0, n, size=(size, n), dtype=np.int32 if n < 2**31 else np.int64)
    counts = np.empty((size, n), dtype=np.float32 if n < 2**24 else np.float64)
    for resample, rows in zip(counts, draws, strict=True):  # one row at a time stays in cache
        resample[:] = np.bincount(rows, minlength=n)
    return counts


def row_groups(raw_path: str, group: str | None, ids: np.ndarray) -> np.ndarray | None:
    """The --group value of each of these rows (by id), or None without --group."""
    if group is None:
        return None
    raw = pd.read_parquet(raw_path, columns=[ID_COLUMN, f"__{group}"]).set_index(ID_COLUMN)
    return raw[f"__{group}"].reindex(ids).to_numpy()


def weighted_objective(
    weights: np.ndarray, y: np.ndarray, predicted: np.ndarray, objective: Objective
) -> np.ndarray:
    """The threshold objective on each weighted row set. weights: (B, n); y, predicted: (n,) 0/1."""

    def weighted_count(rows: np.ndarray) -> np.ndarray:  # in the weights' dtype: no upcast copy
        return (weights @ rows.astype(weights.dtype)).astype(np.float64)

    tp = weighted_count(y * predicted)
    fp = weighted_count((1 - y) * predicted)
    fn = weighted_count(y * (1 - predicted))
    return objective_values(tp, fp, fn, objective, n_rows=len(y))


def same_decisions(
    y: np.ndarray, scores_a: Any, scores_b: Any, threshold_a: float, threshold_b: float
) -> bool:
    """Whether two models score every row alike at one threshold (with a positive row, so some
    resample has a PR-AUC): their paired differences are then zero in every resample."""
    return bool(
        threshold_a == threshold_b
        and y.sum() > 0
        and np.array_equal(np.asarray(scores_a), np.asarray(scores_b))
    )


def paired_bootstrap(
    y: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    threshold_a: float,
    threshold_b: float,
    objective: Objective,
    n_boot: int,
    seed: int,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """95% intervals of (a - b) on the same resampled test rows, for the threshold objective at
    each model's own tuned threshold and for PR-AUC (resamples without positives are skipped).
    With `groups` (one value per row), whole groups are resampled: rows of a group are not
    independent, and resampling them one by one would make the interval too narrow."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y, dtype=np.float64)
    pred_a = (np.asarray(scores_a) >= threshold_a).astype(np.float64)
    pred_b = (np.asarray(scores_b) >= threshold_b).astype(np.float64)
    sorted_a, sorted_b = (
        SortedScores(y, np.asarray(scores_a)),
        SortedScores(y, np.asarray(scores_b)),
    )
    codes = None if groups is None else group_codes(groups)
    units = len(y) if codes is None else int(codes.max()) + 1

    def differences(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if codes is not None:
            weights = np.take(weights, codes, axis=1)  # a group's draw count weighs its rows
        objective_diff = weighted_objective(weights, y, pred_a, objective) - weighted_objective(
            weights, y, pred_b, objective
        )
        return objective_diff, sorted_a.average_precision(weights) - sorted_b.average_precision(
            weights
        )

    if same_decisions(y, scores_a, scores_b, threshold_a, threshold_b):
        # a model against itself (a rerun's challenger is often its champion): every resample's
        # differences are exactly zero (those without a positive have no PR-AUC and are skipped)
        objective_diff = pr_diff = np.zeros(n_boot)
    else:
        chunk = bootstrap_chunk(len(y))
        sizes = [min(chunk, n_boot - start) for start in range(0, n_boot, chunk)]
        chunks = [differences(resample_counts(rng, units, size)) for size in sizes]
        objective_diff, pr_diff = (np.concatenate(part) for part in zip(*chunks, strict=True))
        pr_diff = pr_diff[~np.isnan(pr_diff)]
    ones = np.ones((1, len(y)))

    def interval(values) -> dict[str, float]:
        low, high = np.percentile(values, [2.5, 97.5])
        return {"low": float(low), "high": float(high)}

    return Comparison.check(
        {
            "objective": objective.label,
            "objective_difference": float(
                (
                    weighted_objective(ones, y, pred_a, objective)
                    - weighted_objective(ones, y, pred_b, objective)
                )[0]
            ),
            "objective_interval": interval(objective_diff),
            "pr_auc_difference": float(
                average_precision(y, scores_a) - average_precision(y, scores_b)
            ),
            "pr_auc_interval": interval(pr_diff),
            "n_boot": n_boot,
            "n_rows": int(len(y)),
            "resampled": "rows" if codes is None else f"{units} groups",
        }
    )


def part_predictions(branches_dir: UPath, name: str, part: str) -> pd.DataFrame:
    """A branch's predictions on one part of the split ("stop", "tune" or "test")."""
    return read_parquet(branches_dir / name / "predictions.parquet").query(f"part == '{part}'")


def branch_bootstrap(
    part: str,
    rows: dict[str, pd.DataFrame],
    a: str,
    b: str,
    by_name: dict[str, dict[str, Any]],
    config: TrainConfig,
    groups: np.ndarray | None,
) -> dict[str, Any]:
    """The paired bootstrap of branch `a` minus branch `b` on their predictions on one part
    (`rows`, by branch), each at its own tuned threshold; `groups`: the rows' --group values."""
    rows_a, rows_b = rows[a], rows[b]
    if not np.array_equal(rows_a[ID_COLUMN].to_numpy(), rows_b[ID_COLUMN].to_numpy()):
        raise RuntimeError(f"{a} and {b} {part} predictions are not on the same rows")
    inputs = (
        rows_a.y.to_numpy(),
        rows_a.probability.to_numpy(),
        rows_b.probability.to_numpy(),
        float(by_name[a]["threshold"]),
        float(by_name[b]["threshold"]),
    )
    path = config.store_dir / COMPARISONS / f"{_bootstrap_key(inputs, config, groups)}.json"
    try:
        return Comparison.check(read_json(path))
    except (OSError, ValueError):  # never computed, or not readable: compute it
        pass
    result = paired_bootstrap(
        *inputs, parse_objective(config.objective), config.bootstrap, config.seed, groups
    )
    try:
        write_json(path, result)
        _prune_comparisons(path.parent)
    except Exception as error:  # noqa: BLE001 - an optimisation never fails the run (as reuse.keep)
        log.warning("could not keep the comparison in %s: %s", path.parent, error)
    return result


COMPARISONS = "comparisons"  # in the store: paired bootstraps computed before, by their inputs
KEPT_COMPARISONS = 500  # the newest are kept; each is ~1 KB


def _bootstrap_key(inputs: tuple[Any, ...], config: TrainConfig, groups: Any) -> str:
    """A hash of everything a paired bootstrap's result depends on: the labels, both models'
    scores and thresholds, the objective, the resamples and seed, the groups and the code
    (tasks.reuse.code_version). A second run whose branches were reused (tasks.reuse) compares
    the same predictions again; on insurance's 76k test rows 2,000 resamples took ~4 s."""
    from tasks.reuse import code_version

    digest = hashlib.sha256(code_version().encode())
    for value in (*inputs, None if groups is None else pd.util.hash_array(np.asarray(groups))):
        if isinstance(value, np.ndarray):
            digest.update(f"{value.dtype}{value.shape}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        else:
            digest.update(repr(value).encode())
    digest.update(f"{config.objective}|{config.bootstrap}|{config.seed}".encode())
    return digest.hexdigest()[:32]


def _prune_comparisons(directory: UPath) -> None:
    """Keep the newest KEPT_COMPARISONS kept comparisons."""
    kept = list(directory.glob("*.json"))
    if len(kept) > KEPT_COMPARISONS:
        kept.sort(key=lambda p: p.stat().st_mtime)
        for old in kept[: len(kept) - KEPT_COMPARISONS]:
            old.unlink(missing_ok=True)


def settle_selection(
    leader: str,
    ranked: list[dict[str, Any]],
    config: TrainConfig,
    branches_dir: UPath,
    raw_path: str,
) -> tuple[str, dict[str, Any] | None]:
    """The strategy to select, given the one ranked first (`leader`), and the evidence.

    The ranking is noisy: the tuning half is small, and the best of eight noisy scores is
    usually a lucky one (on the quality benchmark, 5 resplits, always taking baseline beat taking
    the tuning half's best on 6 of 7 datasets). So under `--selection reliable` (the default,
    ranking by PR-AUC) the leader is selected only when its tuning-half PR-AUC is reliably
    higher than baseline's: the paired bootstrap's 95% interval of the difference lies above
    zero. Otherwise baseline, plain training with its own tuned threshold, is selected.
    Without an eligible baseline, or under `--selection top`, the leader is."""
    by_name = {r["strategy"]: r for r in ranked if r["status"] == "ok"}
    baseline = by_name.get("baseline")
    if (
        config.selection == "top"
        or config.rank_by != "pr_auc"
        or leader == "baseline"
        or baseline is None
        or not baseline.get("eligible")
    ):
        return leader, None
    tune = {name: part_predictions(branches_dir, name, "tune") for name in (leader, "baseline")}
    groups = row_groups(raw_path, config.group, tune[leader][ID_COLUMN].to_numpy())
    comparison = branch_bootstrap("tune", tune, leader, "baseline", by_name, config, groups)
    reliable = comparison["pr_auc_interval"]["low"] > 0
    evidence = SelectionEvidence.check(
        {
            "rule": "reliable",
            "leader": leader,
            "selected": leader if reliable else "baseline",
            "part": "validation tuning half",
            "pr_auc_difference": comparison["pr_auc_difference"],
            "pr_auc_interval": comparison["pr_auc_interval"],
            "n_boot": comparison["n_boot"],
            "n_rows": comparison["n_rows"],
            "resampled": comparison["resampled"],
        }
    )
    return evidence["selected"], evidence


def selection_text(evidence: dict[str, Any] | None) -> str:
    """One sentence on why the leader was or was not selected (empty without evidence)."""
    if evidence is None:
        return ""
    ci = evidence["pr_auc_interval"]
    numbers = (
        f"PR-AUC {evidence['pr_auc_difference']:+.4f} over baseline on the validation tuning "
        f"half, 95% paired-bootstrap interval {ci['low']:+.4f} to {ci['high']:+.4f}"
    )
    if evidence["pr_auc_difference"] == 0:
        return (
            f"{evidence['leader']} ties baseline on the validation tuning half (equal PR-AUC): "
            "baseline is selected."
        )
    if evidence["selected"] == "baseline":
        return (
            f"{evidence['leader']} ranked first ({numbers}) but the interval includes zero, so "
            "it is not reliably better: baseline is selected."
        )
    return f"{evidence['leader']} ranked first and is reliably better than baseline ({numbers})."


def group_codes(values: np.ndarray) -> np.ndarray:
    """Integer codes 0..k-1 of the values (a missing value is a group of its own row)."""
    import pandas as pd

    codes = pd.factorize(values)[0]
    missing = codes < 0
    codes[missing] = codes.max() + 1 + np.arange(int(missing.sum()))
    return codes


def verdict_text(
    selected: str,
    comparison: dict[str, Any] | None,
    rank_by: str,
    evidence: dict[str, Any] | None = None,
    balancing_ran: bool = True,
) -> str:
    """The verdict's sentence; `balancing_ran`: whether any balancing strategy ran (and did not
    fail) beside baseline."""
    if evidence is not None and evidence["selected"] != evidence["leader"]:
        return f"Selected **baseline**: {selection_text(evidence)}"
    if selected == "baseline":
        if not balancing_ran:
            return (
                "Selected **baseline**, the only strategy trained in this run: there is no "
                "balancing strategy to compare it with."
            )
        return (
            f"Selected **baseline** (best {rank_by} on the validation tuning half): no balancing "
            "strategy beat plain training with a tuned threshold on this data."
        )
    if comparison is None:
        return (
            f"Selected **{selected}** (best {rank_by} on the validation tuning half). "
            "No baseline branch ran, so there is no margin to report."
        )
    diff, ci = comparison["objective_difference"], comparison["objective_interval"]
    text = (
        f"Selected **{selected}** (best {rank_by} on the validation tuning half). "
        f"{selection_text(evidence) + ' ' if evidence else ''}On the test rows, "
        f"with each model at its own tuned threshold, its {comparison['objective']} is "
        f"{diff:+.4f} versus "
        f"baseline (95% paired-bootstrap interval {ci['low']:+.4f} to {ci['high']:+.4f}; PR-AUC "
        f"{comparison['pr_auc_difference']:+.4f}, interval "
        f"{comparison['pr_auc_interval']['low']:+.4f} to "
        f"{comparison['pr_auc_interval']['high']:+.4f})."
    )
    if ci["low"] <= 0 <= ci["high"]:
        text += (
            f" The interval includes zero: {selected} and baseline are **not distinguishable** on "
            "this data; baseline with a tuned threshold is the simpler choice."
        )
    else:
        better = "better" if ci["low"] > 0 else "worse"
        text += f" The interval excludes zero: {selected} is reliably {better} than baseline here."
    return text


def operating_points(
    y: np.ndarray, scores: np.ndarray, thresholds: list[float]
) -> list[dict[str, float]]:
    """Precision, recall and alerts per 1,000 rows at each threshold (positive iff p >= t)."""
    rows = []
    for t in thresholds:
        predicted = scores >= t
        tp = int((predicted & (y == 1)).sum())
        alerts = int(predicted.sum())
        rows.append(
            {
                "threshold": float(t),
                "precision": tp / alerts if alerts else float("nan"),
                "recall": tp / int(y.sum()) if y.sum() else float("nan"),
                "alerts_per_1000": 1000 * alerts / len(y),
            }
        )
    return rows


def summarize_repeats(
    records: list[dict[str, Any]], keys: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    """Mean ± sd of test metrics per strategy over the repeated seeds (ok repeats only)."""
    summary: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["strategy"] for r in records):
        ok = [r for r in records if r["strategy"] == name and r["status"] == "ok"]
        entry: dict[str, Any] = {
            "repeats_ok": len(ok),
            "repeats": sum(r["strategy"] == name for r in records),
        }
        for key in keys:
            values = np.array([r[key] for r in ok], dtype=float)
            entry[key] = (
                {
                    "mean": float(values.mean()),
                    "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                }
                if len(values)
                else None
            )
        summary[name] = entry
    return summary


def reference_text(
    selected: str, ranked: list[dict[str, Any]], comparison: dict[str, Any] | None
) -> str:
    """Plainly, where the gradient-boosting reference stands against the networks on the test
    rows (PR-AUC), with the paired-bootstrap interval of selected minus reference."""
    if comparison is None:
        return ""
    by_name = {r["strategy"]: r for r in ranked if r["status"] == "ok"}
    reference = by_name[REFERENCE]["pr_auc"]
    networks = {n: r["pr_auc"] for n, r in by_name.items() if n != REFERENCE}
    best = max(networks, key=networks.get)
    diff, ci = comparison["pr_auc_difference"], comparison["pr_auc_interval"]
    interval = f"95% paired-bootstrap interval {ci['low']:+.4f} to {ci['high']:+.4f}"
    if selected == REFERENCE:  # shipped with --allow-reference-champion; compared with `best`
        return (
            f"The gradient-boosting reference is shipped (--allow-reference-champion): it ranked "
            f"first on the validation tuning half. On the test rows it reaches PR-AUC "
            f"{reference:.4f} against {networks[best]:.4f} for the best network, {best} "
            f"(reference minus {best} {diff:+.4f}, {interval})."
        )
    evidence = f"{selected} minus reference {diff:+.4f}, {interval}"
    if reference <= max(networks.values()):
        return (
            f"The gradient-boosting reference (not shipped) reaches test PR-AUC {reference:.4f}; "
            f"{selected} {networks[selected]:.4f} ({evidence})."
        )
    text = (
        f"The gradient-boosting reference (HistGradientBoosting on the same training rows, not "
        f"shipped) **beats every network** on the test rows: PR-AUC {reference:.4f} against "
        f"{networks[selected]:.4f} for {selected} ({evidence}) and {networks[best]:.4f} for the "
        f"best network, {best}."
    )
    if ci["high"] < 0:
        return text + " The interval excludes zero: the reference is reliably better here."
    return text + " The interval includes zero: the difference is within resampling noise."


def _counterpart(selected: str, ranked: list[dict[str, Any]]) -> str:
    """What the selected model is weighed against beyond the baseline: the gradient-boosting
    reference, or when the reference itself is selected, the best network on the test rows."""
    if selected != REFERENCE:
        return REFERENCE
    networks = [r for r in ranked if r["status"] == "ok" and r["strategy"] != REFERENCE]
    return max(networks, key=lambda r: r["pr_auc"])["strategy"] if networks else REFERENCE


@task(name="compare", cache_policy=NO_CACHE)
def compare_with_baseline(
    branches_dir: UPath,
    ranked: list[dict[str, Any]],
    selected: str,
    config: TrainConfig,
    raw_path: str,
    evidence: dict[str, Any] | None = None,
) -> tuple[dict[str, Any] | None, str, list[dict[str, float]], dict[str, Any] | None]:
    """The verdict's evidence: selected vs baseline on the test rows, and the selected model's
    operating points; and selected vs the gradient-boosting reference (a fourth element: that
    comparison, or None when the reference did not run)."""
    by_name = {r["strategy"]: r for r in ranked}
    test = {selected: part_predictions(branches_dir, selected, "test")}
    chosen = test[selected]
    y, scores = chosen.y.to_numpy(), chosen.probability.to_numpy()
    groups = row_groups(raw_path, config.group, chosen[ID_COLUMN].to_numpy())

    def against(other_name: str) -> dict[str, Any] | None:
        other = by_name.get(other_name)
        if not other or other["status"] != "ok" or other_name == selected:
            return None
        test[other_name] = part_predictions(branches_dir, other_name, "test")
        return branch_bootstrap("test", test, selected, other_name, by_name, config, groups)

    comparison, reference = against("baseline"), against(_counterpart(selected, ranked))
    tuned = by_name[selected]["threshold"]
    grid = sorted({round(float(t), 4) for t in np.linspace(0.05, 0.95, 19)} | {tuned, 0.5})
    balancing = any(
        r["strategy"] not in ("baseline", REFERENCE) and r["status"] == "ok" for r in ranked
    )
    verdict = verdict_text(selected, comparison, config.rank_by, evidence, balancing)
    about_reference = reference_text(selected, ranked, reference)
    return (
        comparison,
        f"{verdict} {about_reference}".strip(),
        operating_points(y, scores, grid),
        reference,
    )
