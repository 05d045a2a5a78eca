"""Great Expectations gates.

Each suite is a JSON file in `expectations/`. A suite entry is a GX expectation whose `kwargs` may
name run-specific columns as templates (`"{target}"`, or `"for_each": "numeric_features"` with
`"{column}"`), and whose limits are GX suite parameters (`{"$PARAMETER": "min_class_count"}`)
supplied from the run's config. Every entry carries its reason in GX's `notes`, and may carry
`meta.describe`, a sentence used when it fails. A failed gate raises `GateFailed` listing each
failed expectation with its observed value.

Inside a training run every gate validates through a Checkpoint of the run's own GX project
(`tasks.gx_run`), which keeps its results for the run's Data Docs; elsewhere (prediction, tests
of one stage) through one ephemeral context per process.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks import gx_run, preload
from tasks.errors import GateFailed

EXPECTATIONS_DIR = Path(__file__).resolve().parent.parent / "expectations"
_TEMPLATE = re.compile(r"^\{(\w+)\}$")
_EMBEDDED = re.compile(r"\{(\w+)\}")
_LOCK = threading.Lock()
log = logging.getLogger(__name__)


@dataclass
class GateReport:
    """What a gate checked and how it went; kept for the run record and the report."""

    stage: str
    success: bool
    checked: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "success": self.success,
            "expectations": len(self.checked),
            "failures": self.failures,
            "checked": self.checked,
        }


@cache
def _context():
    """One ephemeral GX context per process, with its progress bars off."""
    import great_expectations as gx

    gx_run.quiet()
    ctx = gx.get_context(mode="ephemeral")
    gx_run.progress_bars_off(ctx)
    source = ctx.data_sources.add_pandas(gx_run.SOURCE)
    asset = source.add_dataframe_asset(gx_run.ASSET)
    return ctx, asset.add_batch_definition_whole_dataframe(gx_run.BATCH)


def load_suite_file(name: str) -> dict[str, Any]:
    path = EXPECTATIONS_DIR / f"{name}.json"
    return json.loads(path.read_text())


def _bind(value: Any, bindings: dict[str, Any]) -> Any:
    if isinstance(value, str) and (match := _TEMPLATE.match(value)):
        return bindings[match.group(1)]  # a whole value: may bind a list, a number, ...
    if isinstance(value, str) and "{" in value:
        return _EMBEDDED.sub(lambda m: str(bindings[m.group(1)]), value)
    if isinstance(value, list):
        return [_bind(item, bindings) for item in value]
    if isinstance(value, dict) and "$PARAMETER" not in value:
        return {key: _bind(item, bindings) for key, item in value.items()}
    return value


def expand_suite(spec: dict[str, Any], bindings: dict[str, Any]) -> list[dict[str, Any]]:
    """Turn a suite template into concrete expectation configurations for this run.

    `requires: [key, ...]` skips an entry when a binding is missing or false (e.g. no id column);
    `for_each: key` repeats it for every column listed under that binding."""
    concrete: list[dict[str, Any]] = []
    for family, entry in enumerate(spec["expectations"]):
        entry.setdefault("table", "data")
        if not all(bindings.get(key) for key in entry.get("requires", [])):
            continue
        columns = bindings.get(entry["for_each"], []) if "for_each" in entry else [None]
        for column in columns:
            local = {**bindings, "column": column}
            for (
                key,
                value,
            ) in bindings.items():  # per-column bindings: {"<name>_by_column": {col: v}}
                if key.endswith("_by_column") and column in value:
                    local[key.removesuffix("_by_column") + "_of_column"] = value[column]
            concrete.append(
                {
                    "table": entry["table"],
                    "type": entry["type"],
                    "kwargs": _bind(entry["kwargs"], local),
                    "notes": entry["notes"],
                    "meta": {**entry.get("meta", {}), "column": column},
                    "family": family if "for_each" in entry else None,
                }
            )
    return concrete


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return repr(value) if isinstance(value, str) else str(value)


def _examples(values: list[Any], limit: int = 5) -> str:
    shown = ", ".join(_fmt(v) for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


def describe_failure(
    kind: str,
    kwargs: dict[str, Any],
    meta: dict[str, Any],
    result: dict[str, Any],
    frame: pd.DataFrame,
) -> str:
    """One readable sentence naming the column, the observed value and what was expected."""
    column = kwargs.get("column")
    observed = result.get("observed_value")
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if "describe" in meta:
        text = meta["describe"].format_map(
            {
                **kwargs,
                "observed": _fmt(observed) if observed is not None else "?",
                "min_value": _fmt(low),
                "max_value": _fmt(high),
                "column": meta.get("column") or column,
            }
        )
        if result.get("unexpected_count"):
            values = sorted({str(v) for v in result.get("partial_unexpected_list") or []})
            text += f": {_examples(values, 10)} ({result['unexpected_count']} rows)"
    elif kind == "expect_column_to_exist":
        text = f"column '{column}' not found; columns are: {', '.join(map(str, frame.columns))}"
    elif kind == "expect_column_unique_value_count_to_be_between":
        values = sorted(frame[column].dropna().unique().tolist(), key=str)
        bounds = f"{low}" if low == high else f"between {low} and {high}"
        examples = _examples(values, 10)
        text = f"column '{column}' has {observed} distinct values ({examples}); expected {bounds}"
    elif kind == "expect_column_values_to_not_be_null":
        text = (
            f"column '{column}' has {result.get('unexpected_count')} missing values "
            f"(of {result.get('element_count')} rows)"
        )
    elif kind == "expect_column_values_to_be_in_type_list":
        examples = result.get("partial_unexpected_list") or []
        dtype = observed if observed is not None else frame[column].dtype
        text = f"column '{column}' is not numeric (dtype {dtype}"
        text += f", e.g. {_examples(examples, 3)})" if examples else ")"
    elif kind == "expect_column_values_to_be_unique":
        text = (
            f"column '{column}' has {result.get('unexpected_count')} rows with repeated values "
            f"(e.g. {_examples(result.get('partial_unexpected_list') or [])})"
        )
    elif kind == "expect_column_values_to_be_in_set":
        values = sorted({str(v) for v in result.get("partial_unexpected_list") or []})
        text = (
            f"column '{column}' has {result.get('unexpected_count')} rows with values outside the "
            f"expected set: {_examples(values, 10)}"
        )
    elif "unexpected_count" in result:
        text = (
            f"column '{column}' has {result.get('unexpected_count')} unexpected values "
            f"(e.g. {_examples(result.get('partial_unexpected_list') or [])}); expected {kind}"
        )
    else:
        text = (
            f"{kind} on '{column}': observed {_fmt(observed)}; "
            f"expected between {_fmt(low)} and {_fmt(high)}"
        )
    if hint := meta.get("hint"):
        text += f" ({hint})"
    return text


def validate(
    stage: str,
    suite_name: str,
    tables: dict[str, pd.DataFrame] | pd.DataFrame,
    bindings: dict[str, Any],
    parameters: dict[str, Any] | None = None,
    raise_on_failure: bool = True,
) -> GateReport:
    """Validate the tables (a frame, or {"data": frame, "facts": one-row frame}) with the suite
    file `suite_name`. Parameters the config does not supply take the suite file's defaults.
    Raises GateFailed naming every failed expectation when the gate fails."""
    preload.finish("great_expectations")  # the first gate is the first use of GX in a run
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    if isinstance(tables, pd.DataFrame):
        tables = {"data": tables}
    spec = load_suite_file(suite_name)
    params = {**spec.get("parameters", {}), **(parameters or {})}
    report = GateReport(stage=stage, success=True)
    concrete, summaries = _screen_wide_families(expand_suite(spec, bindings), tables, params)
    for table_name, frame in {**tables, **summaries}.items():
        configs = [
            ExpectationConfiguration(
                type=c["type"], kwargs=c["kwargs"], notes=c["notes"], meta=c["meta"]
            )
            for c in concrete
            if c["table"] == table_name
        ]
        if configs:
            outcome = _run_suite(f"{suite_name}.{table_name}", stage, configs, frame, params)
            _collect(report, table_name, outcome, frame)
    report.success = not report.failures
    log.info(
        "%s gate: %d expectations, %d failed", stage, len(report.checked), len(report.failures)
    )
    if report.failures and raise_on_failure:
        raise GateFailed(stage, report.failures)
    return report


def _run_suite(
    name: str, stage: str, configs: list[Any], frame: pd.DataFrame, params: dict[str, Any]
) -> Any:
    """Validate: through the run's GX project when inside a run, else the ephemeral context."""
    from great_expectations.core.expectation_suite import ExpectationSuite

    with _LOCK:  # a GX context is not thread-safe; branches validate from several threads
        if (run_project := gx_run.current()) is not None:
            return run_project.validate(name, stage, configs, frame, params)
        _, batch_definition = _context()
        batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
        suite = ExpectationSuite(name=name, expectations=[c.to_domain_obj() for c in configs])
        return batch.validate(suite, expectation_parameters=params, result_format="SUMMARY")


SCREEN_ABOVE = 16  # a per-column family of more expectations than this is screened first


def _parameter(value: Any, params: dict[str, Any]) -> Any:
    return params.get(value["$PARAMETER"]) if isinstance(value, dict) else value


def _dtype(values: pd.Series, kwargs: dict[str, Any]) -> str:
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    return str(values.dtype) if numeric else f"not numeric ({values.dtype})"


def _numeric(statistic: str) -> Callable[[pd.Series, dict[str, Any]], float | None]:
    def compute(values: pd.Series, kwargs: dict[str, Any]) -> float | None:
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            return None
        return float(getattr(values, statistic)())

    return compute


# A per-column expectation a wide family may be screened for: the statistic GX computes for it
# (one column of the table's column summary) and the summary's expectation on that statistic.
SUMMARY: dict[str, tuple[str, Callable[[pd.Series, dict[str, Any]], Any]]] = {
    "expect_column_to_exist": ("present", lambda values, kwargs: 1),
    "expect_column_values_to_not_be_null": ("missing", lambda v, k: int(v.isna().sum())),
    "expect_column_values_to_be_in_type_list": ("dtype", _dtype),
    "expect_column_values_to_be_in_set": (
        "unseen",
        lambda v, k: int((~v.dropna().isin(list(k["value_set"]))).sum()),
    ),
    "expect_column_mean_to_be_between": ("mean", _numeric("mean")),
    "expect_column_stdev_to_be_between": ("std", _numeric("std")),
    "expect_column_min_to_be_between": ("min", _numeric("min")),
}


def _summary_check(kind: str, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The expectation on the column summary that stands for `kind` on each column."""
    statistic = SUMMARY[kind][0]
    if statistic == "dtype":
        return "expect_column_values_to_be_in_set", {
            "column": statistic,
            "value_set": kwargs.get("type_list") or [],
        }
    if statistic in ("mean", "std", "min"):
        bounds = {key: kwargs[key] for key in ("min_value", "max_value") if key in kwargs}
        return "expect_column_values_to_be_between", {"column": statistic, **bounds}
    exact = 1 if statistic == "present" else 0
    return "expect_column_values_to_be_between", {
        "column": statistic,
        "min_value": exact,
        "max_value": exact,
    }


def _holds(value: Any, check: tuple[str, dict[str, Any]], params: dict[str, Any]) -> bool:
    kind, kwargs = check
    if kind == "expect_column_values_to_be_in_set":
        return value in kwargs["value_set"]
    low = _parameter(kwargs.get("min_value"), params)
    high = _parameter(kwargs.get("max_value"), params)
    return bool(
        value is not None
        and np.isfinite(value)
        and (low is None or value >= low)
        and (high is None or value <= high)
    )


def _screen_wide_families(
    concrete: list[dict[str, Any]], tables: dict[str, pd.DataFrame], params: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, pd.DataFrame]]:
    """Gates must scale with cells, not columns: GX spends a fixed overhead per expectation, so
    a family of thousands of per-column expectations (5,000 numeric columns) would take minutes.
    The statistic of each column of a wide family is computed with pandas into a column summary
    of its table (`<table>.columns`: one row per column), and the columns that clearly pass are
    validated by GX as one expectation on that summary; the rest (any failure) go to GX one
    column at a time as before, so messages name the columns as always."""
    sizes = Counter(c["family"] for c in concrete if c["family"] is not None)
    left: list[dict[str, Any]] = []
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    families: dict[tuple[str, str, str], dict[str, Any]] = {}
    for c in concrete:
        frame = tables.get(c["table"])
        column = c["kwargs"].get("column")
        wide = c["family"] is not None and sizes[c["family"]] > SCREEN_ABOVE
        if not wide or frame is None or c["type"] not in SUMMARY or column not in frame.columns:
            left.append(c)
            continue
        statistic, compute = SUMMARY[c["type"]]
        check = _summary_check(c["type"], c["kwargs"])
        value = compute(frame[column], c["kwargs"])
        if not _holds(value, check, params):
            left.append(c)
            continue
        table = f"{c['table']}.columns"
        rows.setdefault(table, {}).setdefault(column, {"column": column})[statistic] = value
        key = (table, json.dumps(check, sort_keys=True, default=str), c["notes"])
        family = families.setdefault(
            key,
            {
                "table": table,
                "type": check[0],
                "kwargs": check[1],
                "notes": c["notes"],
                "meta": {"summarises": c["type"], "columns": 0},
                "family": None,
            },
        )
        family["meta"]["columns"] += 1
    summaries = {table: pd.DataFrame(list(by_column.values())) for table, by_column in rows.items()}
    return left + list(families.values()), summaries


def _collect(report: GateReport, table_name: str, outcome: Any, frame: pd.DataFrame) -> None:
    # columns whose absence an existence check already reports: other checks on them are noise
    reported_missing = {
        r.expectation_config.kwargs.get("column")
        for r in outcome.results
        if r.expectation_config.type == "expect_column_to_exist" and not r.success
    }
    for item in outcome.results:
        config = item.expectation_config
        kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
        meta = dict(config.meta or {})
        observed = item.result.get("observed_value")
        report.checked.append(
            {
                "table": table_name,
                "expectation": config.type,
                "kwargs": kwargs,
                "reason": config.notes,
                **{k: meta[k] for k in ("summarises", "columns") if k in meta},
                "success": bool(item.success),
                "observed": observed
                if isinstance(observed, (int, float, str, type(None)))
                else str(observed),
            }
        )
        if item.success:
            continue
        column = kwargs.get("column")
        if column in reported_missing and config.type != "expect_column_to_exist":
            continue  # the missing column is already reported once by its existence check
        if (
            column is not None
            and column not in frame.columns
            and config.type != "expect_column_to_exist"
        ):
            report.failures.append(
                f"{config.type} could not be evaluated: column '{column}' is not in the "
                f"{table_name} table"
            )
            continue
        if item.exception_info and item.exception_info.get("raised_exception"):
            report.failures.append(
                f"{config.type} on '{column}' could not be evaluated: "
                f"{item.exception_info.get('exception_message')}"
            )
            continue
        report.failures.append(describe_failure(config.type, kwargs, meta, item.result, frame))
