"""The comparison report: one self-contained HTML file (images embedded as base64 PNG)."""

from __future__ import annotations

import base64
import io
import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from markupsafe import Markup, escape
from prefect import task
from prefect.cache_policies import NO_CACHE
from upath import UPath

from tasks.evaluate import wilson_interval
from tasks.features import FeatureSet
from tasks.io import io_task_options
from tasks.model import STOP_CRITERION
from tasks.records import BOARD_METRICS, HEADLINE_METRICS
from tasks.storage import read_parquet, url, write_text
from tasks.thresholds import (
    Objective,
    confusion_at_each_threshold,
    objective_values,
    parse_objective,
)
from tasks.train import rank_value

TEMPLATES = Path(__file__).parent / "templates"
PALETTE = (  # one colour per strategy, the same in every plot, table and run
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def num(value: Any) -> Any:
    """A number as the report prints it: integers with thousands separators, other numbers to
    4 significant digits (0.9956, 1.000, 12.35, 1,235), NaN and None blank; anything else as it
    is."""
    if value is None or isinstance(value, bool | str):
        return "" if value is None else value
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        number = float(value)
        if math.isnan(number):
            return ""
        return f"{number:,.0f}" if abs(number) >= 1000 else f"{number:#.4g}"
    return value


def _bold(text: str) -> Markup:
    """`**x**` (the verdict's markdown) as <strong>, everything else escaped."""
    parts = str(escape(text)).split("**")
    return Markup("".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts)))


@cache
def _template() -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined
    )
    env.filters |= {"num": num, "bold": _bold}
    return env.get_template("report.html.j2")


def strategy_colors(names: list[str]) -> dict[str, str]:
    """Each strategy's colour, by its place in the strategy registry (then the reference): a
    strategy keeps its colour in every plot and table, and from run to run."""
    from tasks.strategies import REFERENCE, STRATEGIES

    order = [*STRATEGIES, REFERENCE, *(n for n in names if n not in STRATEGIES and n != REFERENCE)]
    return {name: PALETTE[order.index(name) % len(PALETTE)] for name in names}


def _tab(columns: list[str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"columns": columns, "rows": rows}


def _figure_to_img(fig, alt: str) -> Markup:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return Markup(f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">')


Colors = dict[str, Any]
PLOT_POINTS = 1500  # drawn per curve: a 12-inch figure at 90 dpi is ~1,100 pixels wide


def thinned(*curves: np.ndarray, points: int = PLOT_POINTS) -> tuple[np.ndarray, ...]:
    """The curves (equal lengths) at most ~`points` indices: every one of the first
    `points // 10` (the few top-scored rows, where a curve jumps), then evenly spaced, the last
    kept. Drawing 76,000 points per line cost the insurance report seconds and showed nothing
    more."""
    n = len(curves[0])
    if n <= points:
        return curves
    head = np.arange(points // 10)
    keep = np.unique(np.r_[head, np.linspace(0, n - 1, points - len(head)).round().astype(int)])
    return tuple(np.asarray(c)[keep] for c in curves)


def pr_roc_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, ...]:
    """(recall, precision, false positive rate) at every distinct score, highest first, from
    (0, 1, 0), thinned for drawing; recall is also the ROC curve's true positive rate."""
    _, tp, fp, fn, tn = confusion_at_each_threshold(y, p)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.r_[0.0, tp / np.maximum(tp + fn, 1)]
        precision = np.r_[1.0, tp / (tp + fp)]
        fpr = np.r_[0.0, fp / np.maximum(fp + tn, 1)]
    return thinned(recall, precision, fpr)


def reliability_points(y: np.ndarray, p: np.ndarray, bins: int = 8) -> tuple[np.ndarray, ...]:
    """(observed positive share, mean score) per quantile bin of the scores, empty bins dropped:
    scikit-learn's calibration_curve(strategy="quantile") without its per-call checks."""
    edges = np.percentile(p, np.linspace(0, 100, bins + 1))
    ids = np.searchsorted(edges[1:-1], p)
    total = np.bincount(ids, minlength=bins)
    filled = total > 0
    observed = np.bincount(ids, weights=y, minlength=bins)[filled] / total[filled]
    return observed, np.bincount(ids, weights=p, minlength=bins)[filled] / total[filled]


def _pr_roc_plot(ok: list[dict[str, Any]], predictions: dict[str, pd.DataFrame], colors: Colors):
    import matplotlib.pyplot as plt

    fig, (ax_pr, ax_roc) = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    for r in ok:
        test = predictions[r["strategy"]].query("part == 'test'")
        recall, precision, fpr = pr_roc_points(test.y.to_numpy(), test.probability.to_numpy())
        ax_pr.plot(
            recall,
            precision,
            color=colors[r["strategy"]],
            label=f"{r['strategy']} (AP {r['pr_auc']:.3f})",
        )
        ax_pr.scatter(
            [r["recall"]], [r["precision"]], color=colors[r["strategy"]], edgecolor="k", zorder=3
        )
        ax_roc.plot(
            fpr, recall, color=colors[r["strategy"]], label=f"{r['strategy']} ({r['roc_auc']:.3f})"
        )
    ax_pr.set(
        title="Precision-recall on test (dots: tuned thresholds)",
        xlabel="recall",
        ylabel="precision",
    )
    ax_roc.plot([0, 1], [0, 1], "k:", lw=1)
    ax_roc.set(title="ROC on test", xlabel="false positive rate", ylabel="true positive rate")
    ax_pr.legend(fontsize=7)
    ax_roc.legend(fontsize=7)
    return fig


def _reliability_plot(
    ok: list[dict[str, Any]], predictions: dict[str, pd.DataFrame], colors: Colors
):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True, layout="constrained")
    for ax, column, title in (
        (axes[0], "probability", "raw"),
        (axes[1], "probability_corrected", "calibrated"),
    ):
        for r in ok:
            test = predictions[r["strategy"]].query("part == 'test'")
            frac, mean = reliability_points(test.y.to_numpy(), test[column].clip(0, 1).to_numpy())
            ax.plot(mean, frac, marker="o", ms=3, color=colors[r["strategy"]], label=r["strategy"])
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set(
            title=f"Reliability on test ({title})",
            xlabel="mean predicted probability",
            ylabel="observed positive share",
        )
    axes[0].legend(fontsize=7)
    return fig


def _confusion_plot(ok: list[dict[str, Any]], colors: Colors):
    import matplotlib.pyplot as plt

    cols = 4
    rows_n = int(np.ceil(len(ok) / cols))
    fig, axes = plt.subplots(
        rows_n, cols, figsize=(12, 3.1 * rows_n), squeeze=False, layout="constrained"
    )
    for ax, r in zip(axes.ravel(), ok, strict=False):
        cm = r["confusion_matrix"]
        grid = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
        ax.imshow(grid, cmap="Blues")
        for (i, j), v in np.ndenumerate(grid):  # light text on the dark cells
            dark = v > grid.max() / 2
            ax.text(j, i, f"{v:,}", ha="center", va="center", color="white" if dark else "black")
        ax.set(
            xticks=[0, 1],
            yticks=[0, 1],
            xticklabels=["pred −", "pred +"],
            yticklabels=["true −", "true +"],
        )
        ax.set_title(
            f"{r['strategy']}\nthreshold {num(r['threshold'])}",
            fontsize=9,
            color=colors[r["strategy"]],
        )
    for ax in axes.ravel()[len(ok) :]:
        ax.axis("off")
    return fig


def _threshold_plot(
    ok: list[dict[str, Any]],
    predictions: dict[str, pd.DataFrame],
    colors: Colors,
    objective: Objective,
):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4.5), layout="constrained")
    for r in ok:
        tune = predictions[r["strategy"]].query("part == 'tune'")
        t, tp, fp, fn, _ = confusion_at_each_threshold(
            tune.y.to_numpy(), tune.probability.to_numpy()
        )
        ax.plot(
            *thinned(t, objective_values(tp, fp, fn, objective)),
            color=colors[r["strategy"]],
            label=r["strategy"],
        )
        ax.axvline(r["threshold"], color=colors[r["strategy"]], ls=":", lw=1)
    ax.set(
        title=f"{objective.label} vs threshold on the validation tuning half (dotted: tuned "
        "thresholds)",
        xlabel="threshold",
        ylabel=objective.label,
    )
    ax.legend(fontsize=7, ncol=3)
    return fig


def _training_plot(histories: dict[str, list[dict[str, list[float]]]], colors: Colors):
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    for name, members in histories.items():
        color = colors.get(name, "grey")
        for i, history in enumerate(members):
            ax_loss.plot(
                history.get("loss", []),
                color=color,
                alpha=1 if i == 0 else 0.4,
                label=name if i == 0 else None,
            )
            ax_val.plot(
                history.get(STOP_CRITERION, []),
                color=color,
                alpha=1 if i == 0 else 0.4,
                label=name if i == 0 else None,
            )
    ax_loss.set(title="Training loss per check interval", xlabel="check", ylabel="loss")
    ax_val.set(
        title="Early stopping's criterion: stop-half log-likelihood of the reported probability",
        xlabel="check",
        ylabel="mean log-likelihood per row",
    )
    ax_val.legend(fontsize=7)
    return fig


def _class_counts_plot(ok: list[dict[str, Any]], colors: Colors):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4), layout="constrained")
    names = [r["strategy"] for r in ok]
    counts = [list(r["train_class_counts"].values()) for r in ok]
    labels = list(ok[0]["train_class_counts"].keys()) if ok else ["positive", "negative"]
    x = np.arange(len(names))
    for j, label in enumerate(labels):
        ax.bar(x + (j - 0.5) * 0.4, [c[j] for c in counts], width=0.4, label=f"class {label}")
    ax.set(xticks=x, title="Training rows per class after each strategy", ylabel="rows")
    ax.set_xticklabels(names, rotation=20, fontsize=8, ha="right")
    for label in ax.get_xticklabels():
        label.set_color(colors[label.get_text()])
    ax.legend()
    return fig


def _plots(
    records: list[dict[str, Any]],
    predictions: dict[str, pd.DataFrame],
    histories: dict[str, list[dict[str, list[float]]]],
    objective: Objective,
) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    # labels and strategy names are data: a class called '$x' must print, not parse as mathtext
    matplotlib.rcParams["text.parse_math"] = False
    ok = [r for r in records if r["status"] == "ok"]
    colors = strategy_colors([r["strategy"] for r in records])
    figures = {
        "pr_roc": (_pr_roc_plot(ok, predictions, colors), "precision-recall and ROC curves"),
        "reliability": (_reliability_plot(ok, predictions, colors), "reliability curves"),
        "confusion": (_confusion_plot(ok, colors), "confusion matrices at the tuned thresholds"),
        "threshold": (
            _threshold_plot(ok, predictions, colors, objective),
            "metric versus threshold",
        ),
    }
    if histories:
        figures["training"] = (_training_plot(histories, colors), "training curves")
    figures["class_counts"] = (_class_counts_plot(ok, colors), "class counts per strategy")
    return {name: _figure_to_img(fig, alt) for name, (fig, alt) in figures.items()}


@task(name="report", **io_task_options())
def write_report(
    path: UPath,
    run: dict[str, Any],
    metrics: dict[str, Any],
    feature_set: FeatureSet,
    branches_dir: UPath,
    compared: tuple[dict[str, Any] | None, str, list[dict[str, float]], dict[str, Any] | None],
    decision: dict[str, Any] | None = None,
) -> UPath:
    """Read the branches' predictions and histories, draw the plots, render one HTML file from
    the template. `compared` is what `compare_with_baseline` returned: the comparison with the
    baseline (none when baseline is selected), the verdict (which covers the reference
    comparison) and the selected model's operating points. The feature set, not its manifest,
    is the parameter: Prefect walks every task parameter element by element, and on wide data
    the manifest's per-column statistics took ~15 s to walk."""
    comparison, verdict, operating, _ = compared
    manifest = feature_set.manifest
    records = metrics["strategies"]
    predictions = {
        r["strategy"]: read_parquet(branches_dir / r["strategy"] / "predictions.parquet")
        for r in records
        if r["status"] == "ok"
    }
    histories = {}
    for r in records:
        history_file = branches_dir / r["strategy"] / "history.json"
        if r["status"] == "ok" and history_file.is_file():
            histories[r["strategy"]] = json.loads(history_file.read_text())
    plots = _plots(records, predictions, histories, parse_objective(metrics["config"]["objective"]))
    repeats = metrics.get("repeats")
    page = _template().render(
        run_id=metrics["run_id"],
        answer=answer_box(metrics, manifest["positive_label"]),
        verdict=verdict,
        rank_by=metrics["rank_by"],
        reference_shippable=bool(metrics["config"].get("allow_reference_champion")),
        colors=strategy_colors([r["strategy"] for r in records]),
        leaderboard=_leaderboard(metrics),
        comparison=_comparison_table(comparison) if comparison else None,
        champion=_champion(decision) if decision else None,
        operating=_tab(["threshold", "precision", "recall", "alerts_per_1000"], operating),
        repeats=_repeats_table(repeats) if repeats else None,
        plots=plots,
        data=_data(metrics, manifest, run),
        run=_run(run, metrics, manifest),
    )
    return write_text(path, page)


def answer_box(metrics: dict[str, Any], positive: str) -> dict[str, Any]:
    """What to ship and what to expect of it: the selected strategy, its tuned threshold, and
    its precision, recall and alerts per 1,000 rows on the test rows with 95% Wilson
    intervals (from its confusion matrix at that threshold)."""
    chosen = next(r for r in metrics["strategies"] if r["strategy"] == metrics["selected"])
    cm = chosen["confusion_matrix"]
    tp, fp, fn, tn = cm["tp"], cm["fp"], cm["fn"], cm["tn"]
    rows = tp + fp + fn + tn

    def share(k: int, n: int, scale: float = 1.0) -> dict[str, float]:
        value, low, high = wilson_interval(k, n)
        return {"value": value * scale, "low": low * scale, "high": high * scale}

    return {
        "strategy": chosen["strategy"],
        "threshold": chosen["threshold"],
        "positive": positive,
        "rows": rows,
        "precision": share(tp, tp + fp),
        "recall": share(tp, tp + fn),
        "alerts": share(tp + fp, rows, 1000.0),
    }


def answer_markdown(answer: dict[str, Any]) -> str:
    """The answer box as markdown (the UI's artifact)."""

    def figure(name: str) -> str:
        f = answer[name]
        return f"{num(f['value'])} (95% interval {num(f['low'])} to {num(f['high'])})"

    return (
        f"## Ship **{answer['strategy']}** at threshold **{num(answer['threshold'])}**\n\n"
        f"On the {num(answer['rows'])} test rows, at that threshold:\n\n"
        "| | value |\n|---|---|\n"
        f"| precision | {figure('precision')} |\n"
        f"| recall | {figure('recall')} |\n"
        f"| alerts per 1,000 rows | {figure('alerts')} |\n"
    )


BOARD_EXTRAS = (
    *("f1 @0.5", "recall @0.5", "steps", "train seconds", "trained by", "calibration"),
    "error",
)


def _leaderboard(metrics: dict[str, Any]) -> dict[str, Any]:
    """The leaderboard (ranking, threshold, test metrics) and its details (eligibility, status,
    metrics at 0.5, training effort) as two tables that fit a 1280-pixel window: the selected
    row, failed rows and the reference marked."""
    rank_by, selected = metrics["rank_by"], metrics["selected"]
    columns = ["strategy", "rank", f"validation {rank_by}", "threshold", *BOARD_METRICS]
    details = ["strategy", "status", "eligible", *BOARD_EXTRAS]
    rows = []
    for r in metrics["strategies"]:
        eligible = "yes" if r.get("eligible") else "no"
        if r["strategy"] == "reference":
            eligible = "no (reference)"
        row = {
            "strategy": r["strategy"],
            "rank": r.get("rank") or "",
            "status": r["status"],
            "eligible": eligible,
        }
        if r["status"] == "ok":
            row |= {
                f"validation {rank_by}": rank_value(r, rank_by),
                "threshold": r["threshold"],
                **{k: r[k] for k in BOARD_METRICS},
                "f1 @0.5": r["at_0_5"]["f1"],
                "recall @0.5": r["at_0_5"]["recall"],
                "steps": r["steps"],
                "train seconds": r["train_seconds"],
                # a branch reused from an earlier run (tasks.reuse) names that run
                "trained by": r.get("reused_from") or "this run",
                "calibration": r["calibration"]["method"],
            }
        else:
            row["error"] = r.get("error") or ""
        if r["strategy"] == selected:
            row["_class"] = "selected"
        elif r["status"] != "ok":
            row["_class"] = "failed"
        elif r["strategy"] == "reference":
            row["_class"] = "reference"
        rows.append(row)
    return _tab(columns, rows) | {"details": _tab(details, rows)}


def _comparison_table(comparison: dict[str, Any]) -> dict[str, Any]:
    label = "difference (selected − baseline)"
    rows = [
        {
            label: name,
            "point": comparison[point],
            "95% low": comparison[interval]["low"],
            "95% high": comparison[interval]["high"],
        }
        for name, point, interval in (
            (comparison["objective"], "objective_difference", "objective_interval"),
            ("pr_auc", "pr_auc_difference", "pr_auc_interval"),
        )
    ]
    return _tab([label, "point", "95% low", "95% high"], rows)


def _repeats_table(repeats: dict[str, Any]) -> dict[str, Any]:
    rows = [
        {
            "strategy": name,
            "repeats ok": f"{e['repeats_ok']}/{e['repeats']}",
            **{
                k: (f"{num(e[k]['mean'])} ± {num(e[k]['sd'])}" if e.get(k) else "")
                for k in ("pr_auc", "f1", "recall", "precision")
            },
        }
        for name, e in repeats.items()
    ]
    return _tab(["strategy", "repeats ok", "pr_auc", "f1", "recall", "precision"], rows)


def _gate_rows(run: dict[str, Any], manifest: dict[str, Any]) -> list[dict[str, Any]]:
    reused = run.get("feature_set_reused", False)
    return [
        {
            "gate": g["stage"],
            "result": ("passed" if g["success"] else "failed")
            + (
                " (when the reused feature set was built, under this run's limits)"
                if reused and g["stage"] != "raw"
                else ""
            ),
            "expectations": g["expectations"],
            "checked": "; ".join(
                sorted({c["expectation"].replace("expect_", "") for c in g["checked"]})
            ),
        }
        for g in [run["ingest"]["gate"], *manifest["gates"].values()]
    ]


def _outlier_rows(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    outliers = manifest["outliers"]
    seed_rule = outliers["seed_rule_removed"]
    return [
        {
            "class": label,
            "training rows removed": outliers["removed"].get(label, 0),
            "values clipped": outliers["clipped_values"].get(label, 0),
            "seed article's rule would remove": _seed_rule_text(seed_rule.get(label)),
        }
        for label in outliers["removed"]
    ]


def _seed_rule_text(seed: dict[str, Any] | None) -> str:
    if not seed:
        return "not computed (out-of-core path)"
    return f"{seed['removed']} of {seed['of']} ({seed['share']:.0%})"


def _split_rows(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    shares = manifest.get("split_shares", {})
    rows = [
        {
            "split": name,
            "rows": s["rows"],
            "share of rows": shares.get(name, float("nan")),
            "positives": s["positives"],
            "positive share": s["positives"] / max(s["rows"], 1),
        }
        for name, s in manifest["splits"].items()
    ]
    rows += [
        {
            "split": f"validation/{name}",
            "rows": s["rows"],
            "positives": s["positives"],
            "positive share": s["positives"] / max(s["rows"], 1),
        }
        for name, s in manifest["validation_halves"].items()
    ]
    return rows


def _data(metrics: dict[str, Any], manifest: dict[str, Any], run: dict[str, Any]) -> dict:
    ingest = manifest["ingest"]
    outlier_columns = ["class", "training rows removed", "values clipped"]
    outlier_columns.append("seed article's rule would remove")
    split_columns = ["split", "rows", "share of rows", "positives", "positive share"]
    return {
        "source": manifest["source"],
        "sha256": manifest["source_sha256"][:16],
        "fingerprint": metrics["data_fingerprint"],
        "rows": ingest["rows"],
        "class_counts": str(ingest["class_counts"]),
        "duplicates": ingest["exact_duplicate_rows"],
        "conflicting": ingest["conflicting_duplicate_rows"],
        "split_method": manifest["split_method"],
        "spread": manifest.get("feature_duplicates_across_splits", 0),
        "splits": _tab(split_columns, _split_rows(manifest)),
        "outlier_method": manifest["outliers"]["method"],
        "outliers": _tab(outlier_columns, _outlier_rows(manifest)),
        "gates": _tab(["gate", "result", "expectations", "checked"], _gate_rows(run, manifest)),
        "data_docs": run.get("data_docs"),
    }


def _run(run: dict[str, Any], metrics: dict[str, Any], manifest: dict[str, Any]) -> dict:
    durations = [{"step": s["stage"], "seconds": s["seconds"]} for s in run["stages"]]
    versions = [{"package": k, "version": v} for k, v in manifest["versions"].items()]
    return {
        "durations": _tab(["step", "seconds"], durations),
        "config": json.dumps(metrics["config"], indent=2),
        "versions": _tab(["package", "version"], versions),
    }


@task(name="publish-artifacts", cache_policy=NO_CACHE)
def publish_artifacts(
    metrics: dict[str, Any],
    verdict: str,
    run_dir: UPath,
    registry: dict[str, Any],
    decision: dict[str, Any],
    feature_set: FeatureSet,
) -> None:
    """On the flow run, as the UI renders them: the answer box and verdict (markdown), the
    leaderboard (table), drift against the champion (table), and a link to the HTML report."""
    from prefect.artifacts import (
        create_link_artifact,
        create_markdown_artifact,
        create_table_artifact,
    )

    rows = []
    for r in metrics["strategies"]:
        row = {
            "rank": r.get("rank"),
            "strategy": r["strategy"],
            "status": r["status"],
            "error": r.get("error") or "",
        }
        if r["status"] == "ok":
            row |= {
                f"tune_{metrics['rank_by']}": round(r["validation"][metrics["rank_by"]], 4),
                "threshold": round(r["threshold"], 4),
                **{k: round(r[k], 4) for k in HEADLINE_METRICS},
            }
        rows.append(row)
    create_table_artifact(
        key="leaderboard", table=rows, description=f"Strategies of run {metrics['run_id']}"
    )
    if decision.get("drift"):
        create_table_artifact(
            key="drift",
            table=decision["drift"]["table"],
            description=f"Training data vs the champion's: {decision['drift']['status']}",
        )
    answer = answer_box(metrics, feature_set.manifest["positive_label"])
    report_path = run_dir / "report.html"
    create_markdown_artifact(
        key="verdict",
        markdown=f"# Run {metrics['run_id']}\n\n{answer_markdown(answer)}"
        f"\n{verdict}\n\n**Champion / challenger:** "
        f"{registry['decision']}: "
        f"{registry['reason']} (champion now `{registry['champion']}`, registry "
        f"`{registry['registry']}`)\n\n"
        f"Report: `{report_path}`\n",
        description="Which strategy and threshold to ship",
    )
    create_link_artifact(
        key="report",
        link=url(report_path),
        link_text="HTML report",
        description=f"Comparison report of run {metrics['run_id']}",
    )


def _champion(decision: dict[str, Any]) -> dict[str, Any]:
    comparison = decision.get("comparison") or {}
    interval = comparison.get(
        "pr_auc_interval" if decision.get("metric") == "pr_auc" else "objective_interval"
    )
    text = decision["reason"]
    if interval:
        text += (
            f" (champion run {decision['champion_run_id']}, {decision.get('rows')} rows neither "
            f"model trained on, 95% interval {interval['low']:+.4f} to {interval['high']:+.4f})"
        )
    if decision.get("note"):
        text += f". {decision['note']}"
    drift = None
    if decision.get("drift"):
        rows = [
            {k: v for k, v in row.items() if v is not None} for row in decision["drift"]["table"]
        ]
        table = _tab(["feature", "kind", "psi", "ks", "status"], rows)
        drift = table | {"status": decision["drift"]["status"]}
    return {"action": decision["action"], "text": text, "drift": drift}
