"""The comparison report: one self-contained HTML file (images embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from upath import UPath

from tasks.io import io_task_options
from tasks.records import BOARD_METRICS, HEADLINE_METRICS
from tasks.storage import is_local, local_path, read_parquet, write_text
from tasks.thresholds import (
    Objective,
    confusion_at_each_threshold,
    objective_values,
    parse_objective,
)
from tasks.train import rank_value

CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:.5rem 0 1.5rem;font-size:.85rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th{background:#f2f2f2}td.l,th.l{text-align:left}
tr.selected{background:#e8f4e8}tr.failed{background:#fbeaea}
.verdict{background:#f6f8fb;border-left:4px solid #3b6ea5;padding:.75rem 1rem;font-size:1.05rem}
img{max-width:100%;border:1px solid #eee;margin:.5rem 0}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
code,pre{background:#f6f6f6;padding:.1rem .3rem}
"""


def _figure_to_img(fig, alt: str) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(
    rows: list[dict[str, Any]], columns: list[str], table_id: str = "", row_class=None
) -> str:
    head = "".join(
        f'<th class="{"l" if i == 0 else ""}">{html.escape(c)}</th>' for i, c in enumerate(columns)
    )
    body = []
    for row in rows:
        cls = row_class(row) if row_class else ""
        cells = []
        for i, c in enumerate(columns):
            value = row.get(c, "")
            if isinstance(value, float):
                value = "" if np.isnan(value) else f"{value:.4f}"
            align = "l" if i == 0 or isinstance(value, str) else ""
            cells.append(f'<td class="{align}">{html.escape(str(value))}</td>')
        body.append(f'<tr class="{cls}">{"".join(cells)}</tr>')
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


Colors = dict[str, Any]


def _pr_roc_plot(ok: list[dict[str, Any]], predictions: dict[str, pd.DataFrame], colors: Colors):
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    fig, (ax_pr, ax_roc) = plt.subplots(1, 2, figsize=(12, 5))
    for r in ok:
        test = predictions[r["strategy"]].query("part == 'test'")
        precision, recall, _ = precision_recall_curve(test.y, test.probability)
        ax_pr.plot(
            recall,
            precision,
            color=colors[r["strategy"]],
            label=f"{r['strategy']} (AP {r['pr_auc']:.3f})",
        )
        ax_pr.scatter(
            [r["recall"]], [r["precision"]], color=colors[r["strategy"]], edgecolor="k", zorder=3
        )
        fpr, tpr, _ = roc_curve(test.y, test.probability)
        ax_roc.plot(
            fpr, tpr, color=colors[r["strategy"]], label=f"{r['strategy']} ({r['roc_auc']:.3f})"
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
    from sklearn.calibration import calibration_curve

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for ax, column, title in (
        (axes[0], "probability", "raw"),
        (axes[1], "probability_corrected", "calibrated"),
    ):
        for r in ok:
            test = predictions[r["strategy"]].query("part == 'test'")
            frac, mean = calibration_curve(
                test.y, test[column].clip(0, 1), n_bins=8, strategy="quantile"
            )
            ax.plot(mean, frac, marker="o", ms=3, color=colors[r["strategy"]], label=r["strategy"])
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set(
            title=f"Reliability on test ({title})",
            xlabel="mean predicted probability",
            ylabel="observed positive share",
        )
    axes[0].legend(fontsize=7)
    return fig


def _confusion_plot(ok: list[dict[str, Any]]):
    import matplotlib.pyplot as plt

    cols = 4
    rows_n = int(np.ceil(len(ok) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(3 * cols, 2.8 * rows_n), squeeze=False)
    for ax, r in zip(axes.ravel(), ok, strict=False):
        cm = r["confusion_matrix"]
        grid = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
        ax.imshow(grid, cmap="Blues")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=11)
        ax.set(
            xticks=[0, 1],
            yticks=[0, 1],
            xticklabels=["pred −", "pred +"],
            yticklabels=["true −", "true +"],
        )
        ax.set_title(f"{r['strategy']} @ {r['threshold']:.3f}", fontsize=9)
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

    fig, ax = plt.subplots(figsize=(12, 4.5))
    for r in ok:
        tune = predictions[r["strategy"]].query("part == 'tune'")
        t, tp, fp, fn, _ = confusion_at_each_threshold(
            tune.y.to_numpy(), tune.probability.to_numpy()
        )
        ax.plot(
            t,
            objective_values(tp, fp, fn, objective),
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

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
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
                history.get("val_pr_auc", []),
                color=color,
                alpha=1 if i == 0 else 0.4,
                label=name if i == 0 else None,
            )
    ax_loss.set(title="Training loss per check interval", xlabel="check", ylabel="loss")
    ax_val.set(
        title="Stop-half PR-AUC at each check (early stopping)", xlabel="check", ylabel="PR-AUC"
    )
    ax_val.legend(fontsize=7)
    return fig


def _class_counts_plot(ok: list[dict[str, Any]]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4))
    names = [r["strategy"] for r in ok]
    counts = [list(r["train_class_counts"].values()) for r in ok]
    labels = list(ok[0]["train_class_counts"].keys()) if ok else ["positive", "negative"]
    x = np.arange(len(names))
    for j, label in enumerate(labels):
        ax.bar(x + (j - 0.5) * 0.4, [c[j] for c in counts], width=0.4, label=f"class {label}")
    ax.set(xticks=x, title="Training rows per class after each strategy", ylabel="rows")
    ax.set_xticklabels(names, rotation=20, fontsize=8)
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
    import matplotlib.pyplot as plt

    ok = [r for r in records if r["status"] == "ok"]
    colors = {r["strategy"]: plt.cm.tab10(i % 10) for i, r in enumerate(ok)}
    figures = {
        "pr_roc": (_pr_roc_plot(ok, predictions, colors), "precision-recall and ROC curves"),
        "reliability": (_reliability_plot(ok, predictions, colors), "reliability curves"),
        "confusion": (_confusion_plot(ok), "confusion matrices at the tuned thresholds"),
        "threshold": (
            _threshold_plot(ok, predictions, colors, objective),
            "metric versus threshold",
        ),
    }
    if histories:
        figures["training"] = (_training_plot(histories, colors), "training curves")
    figures["class_counts"] = (_class_counts_plot(ok), "class counts per strategy")
    return {name: _figure_to_img(fig, alt) for name, (fig, alt) in figures.items()}


@task(name="report", **io_task_options())
def write_report(
    path: UPath,
    run: dict[str, Any],
    metrics: dict[str, Any],
    manifest: dict[str, Any],
    branches_dir: UPath,
    compared: tuple[dict[str, Any] | None, str, list[dict[str, float]], dict[str, Any] | None],
    decision: dict[str, Any] | None = None,
) -> UPath:
    """Read the branches' predictions and histories, draw the plots, write one HTML file.
    `compared` is what `compare_with_baseline` returned: the comparison with the baseline (none
    when baseline is selected), the verdict (which covers the reference comparison) and the
    selected model's operating points."""
    comparison, verdict, operating, _ = compared
    repeats = metrics.get("repeats")
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
    run_id = html.escape(metrics["run_id"])
    sections = [
        f'<p class="verdict" id="verdict">{_md_bold(html.escape(verdict))}</p>',
        _leaderboard_section(metrics),
        _comparison_table(comparison) if comparison else "",
        _champion_section(decision) if decision else "",
        f"<h2>Operating points of {html.escape(metrics['selected'])} (test rows)</h2>",
        _table(
            operating, ["threshold", "precision", "recall", "alerts_per_1000"], "operating-points"
        ),
        _repeats_section(repeats) if repeats else "",
        f"<h2>Curves</h2>{plots['pr_roc']}{plots['reliability']}",
        f"<h2>Confusion matrices at the tuned thresholds (test)</h2>{plots['confusion']}",
        f"<h2>Threshold tuning</h2>{plots['threshold']}",
        f"<h2>Training</h2>{plots['training']}" if "training" in plots else "",
        f"<h2>Class counts per strategy</h2>{plots['class_counts']}",
        _data_section(metrics, manifest, run),
        _run_section(run, metrics, manifest),
    ]
    body = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>Run {run_id}</title>'
        f"<style>{CSS}</style></head><body>\n<h1>Imbalanced training run {run_id}</h1>\n"
        + "\n".join(section for section in sections if section)
        + "\n</body></html>"
    )
    return write_text(path, body)


BOARD_EXTRAS = ("f1 @0.5", "recall @0.5", "steps", "train seconds", "calibration", "error")


def _leaderboard_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rank_by = metrics["rank_by"]
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
                "calibration": r["calibration"]["method"],
            }
        else:
            row["error"] = r.get("error") or ""
        rows.append(row)
    return rows


def _leaderboard_section(metrics: dict[str, Any]) -> str:
    selected = metrics["selected"]
    columns = ["strategy", "rank", "status", "eligible", f"validation {metrics['rank_by']}"]
    columns += ["threshold", *BOARD_METRICS, *BOARD_EXTRAS]

    def row_class(row: dict[str, Any]) -> str:
        if row["strategy"] == selected:
            return "selected"
        return "failed" if row["status"] != "ok" else ""

    return (
        "<h2>Leaderboard</h2>\n"
        f"<p>Ranked by {html.escape(metrics['rank_by'])} on the validation split (selection "
        "never looks at test): threshold-free metrics on the tuning half, threshold-dependent "
        "ones cross-fitted (threshold tuned on one validation half, scored on the other, both "
        "ways). Test metrics at each strategy's tuned threshold and at 0.5. Every strategy "
        "trains on the same schedule: the stop half is scored every same number of optimizer "
        "steps under the same cap; <em>steps</em> and <em>train seconds</em> are what each "
        "actually used (all members of an ensemble). <code>brier_corrected</code> scores the "
        "calibrated probabilities.</p>\n"
        + _table(_leaderboard_rows(metrics), columns, "leaderboard", row_class)
    )


def _comparison_table(comparison: dict[str, Any]) -> str:
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
    return _table(rows, [label, "point", "95% low", "95% high"], "comparison")


def _repeats_section(repeats: dict[str, Any]) -> str:
    repeat_rows = [
        {
            "strategy": name,
            "repeats ok": f"{e['repeats_ok']}/{e['repeats']}",
            **{
                k: (f"{e[k]['mean']:.4f} ± {e[k]['sd']:.4f}" if e.get(k) else "")
                for k in ("pr_auc", "f1", "recall", "precision")
            },
        }
        for name, e in repeats.items()
    ]
    return (
        "<h2>Repeats (test, mean ± sd)</h2><p>Each repeat draws a new train/validation/test "
        "split and new training seeds, so the spread includes the split's variance, not only "
        "the optimiser's.</p>"
    ) + _table(
        repeat_rows,
        ["strategy", "repeats ok", "pr_auc", "f1", "recall", "precision"],
        "repeats",
    )


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


def _data_section(metrics: dict[str, Any], manifest: dict[str, Any], run: dict[str, Any]) -> str:
    ingest = manifest["ingest"]
    outlier_columns = ["class", "training rows removed", "values clipped"]
    outlier_columns.append("seed article's rule would remove")
    split_columns = ["split", "rows", "share of rows", "positives", "positive share"]
    return (
        "<h2>Data</h2>\n"
        f"<p>Source <code>{html.escape(manifest['source'])}</code>, sha256 "
        f"<code>{manifest['source_sha256'][:16]}…</code>, fingerprint "
        f"<code>{html.escape(metrics['data_fingerprint'])}</code>; {ingest['rows']} rows, "
        f"classes {html.escape(str(ingest['class_counts']))}, positive class "
        f"<code>{html.escape(manifest['positive_label'])}</code>. Exact duplicate rows: "
        f"{ingest['exact_duplicate_rows']}; rows with conflicting labels: "
        f"{ingest['conflicting_duplicate_rows']}. Split: "
        f"{html.escape(manifest['split_method'])}; groups of identical feature rows spread over "
        f"two splits: {manifest.get('feature_duplicates_across_splits', 0)} (refused on random "
        "splits, reported on time splits).</p>\n"
        + _table(_split_rows(manifest), split_columns, "splits")
        + f"\n<h3>Outlier handling ({html.escape(manifest['outliers']['method'])}, training rows "
        "only)</h3>\n"
        + _table(_outlier_rows(manifest), outlier_columns, "outliers")
        + "\n<h3>Gates</h3>"
        + _table(_gate_rows(run, manifest), ["gate", "result", "expectations", "checked"], "gates")
    )


def _run_section(run: dict[str, Any], metrics: dict[str, Any], manifest: dict[str, Any]) -> str:
    durations = [{"step": s["stage"], "seconds": s["seconds"]} for s in run["stages"]]
    versions = [{"package": k, "version": v} for k, v in manifest["versions"].items()]
    config_json = html.escape(json.dumps(metrics["config"], indent=2))
    return (
        f"<h2>Run</h2>{_table(durations, ['step', 'seconds'], 'durations')}\n"
        f"<h3>Effective configuration</h3><pre>{config_json}</pre>\n"
        f"<h3>Library versions</h3>{_table(versions, ['package', 'version'], 'versions')}"
    )


def _md_bold(text: str) -> str:
    parts = text.split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


@task(name="publish-artifacts", cache_policy=NO_CACHE)
def publish_artifacts(
    metrics: dict[str, Any],
    verdict: str,
    report_path: UPath,
    registry: dict[str, Any],
    decision: dict[str, Any],
) -> None:
    """Leaderboard table, verdict markdown and a link to the HTML report on the flow run."""
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
    create_markdown_artifact(
        key="verdict",
        markdown=f"# Run {metrics['run_id']}\n\n{verdict}\n\n**Champion / challenger:** "
        f"{registry['decision']}: "
        f"{registry['reason']} (champion now `{registry['champion']}`, registry "
        f"`{registry['registry']}`)\n\n"
        f"Report: `{report_path}`\n",
        description="Which strategy and threshold to ship",
    )
    link = local_path(report_path).resolve().as_uri() if is_local(report_path) else str(report_path)
    create_link_artifact(
        key="report",
        link=link,
        link_text="HTML report",
        description=f"Comparison report of run {metrics['run_id']}",
    )


def _champion_section(decision: dict[str, Any]) -> str:
    comparison = decision.get("comparison") or {}
    interval = comparison.get(
        "pr_auc_interval" if decision.get("metric") == "pr_auc" else "objective_interval"
    )
    text = f"<strong>{html.escape(decision['action'])}</strong>: {html.escape(decision['reason'])}"
    if interval:
        text += (
            f" (champion run {html.escape(str(decision['champion_run_id']))}, "
            f"{decision.get('rows')} rows neither "
            f"model trained on, 95% interval {interval['low']:+.4f} to {interval['high']:+.4f})"
        )
    if decision.get("note"):
        text += f". {html.escape(decision['note'])}"
    section = f'<h2>Champion / challenger</h2><p id="champion">{text}</p>'
    if decision.get("drift"):
        rows = [
            {k: v for k, v in row.items() if v is not None} for row in decision["drift"]["table"]
        ]
        section += (
            f"<p>Drift of this run's training rows against the champion's training data: "
            f"<strong>{decision['drift']['status']}</strong></p>"
            + _table(rows, ["feature", "kind", "psi", "ks", "status"], "drift")
        )
    return section
