"""The training flow and its command line: `python -m flows.train --help`."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, tags
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ValidationError
from upath import UPath

from tasks.champion import challenge, record_decision, seen_rows
from tasks.compare import compare_with_baseline, summarize_repeats
from tasks.config import TrainConfig, load_config_file
from tasks.errors import ImbalanceFlowError, StrategyError
from tasks.export import export_model
from tasks.features import FeatureSet, build_features, fingerprint, load_valid_feature_set
from tasks.ingest import ingest
from tasks.model import configure_tensorflow
from tasks.outliers import handle_outliers
from tasks.preflight import preflight_training
from tasks.report import publish_artifacts, write_report
from tasks.runs import RunRecord
from tasks.split import split
from tasks.storage import locked, write_json
from tasks.strategies import REFERENCE, STRATEGIES, resolve_strategies
from tasks.stream import ingest_streaming, streaming_reason
from tasks.train import (
    METRIC_KEYS,
    BranchFailed,
    release_parts,
    select,
    train_branch,
    write_leaderboard,  # fmt: skip
)

log = logging.getLogger("flows.train")


class TrainResult(BaseModel):
    """What a successful run hands to callers (and later flows)."""

    run_id: str
    run_dir: str
    feature_set: FeatureSet
    preprocessing_path: str
    selected: str | None
    metrics_path: str
    model_dir: str
    report_path: str
    registry: dict[str, Any]


@contextmanager
def branch_runner(config: TrainConfig) -> Iterator[Any]:
    """The task runner the branches run on: a thread pool here, or a Dask cluster through
    prefect-dask. Dask workers are pointed at this run's Prefect API (otherwise each starts a
    server of its own) and get `tf_threads` TensorFlow threads each; the variables they inherit
    are restored in this process afterwards."""
    if config.runner == "threads":
        with ThreadPoolTaskRunner(max_workers=config.max_parallel) as runner:
            yield runner
        return
    from prefect.client.orchestration import get_client
    from prefect_dask import DaskTaskRunner

    with get_client(sync_client=True) as client:
        api_url = str(client.api_url).rstrip("/")
    threads = str(config.tf_threads)
    worker_env = {"PREFECT_API_URL": api_url, "TF_NUM_INTRAOP_THREADS": threads,
                  "TF_NUM_INTEROP_THREADS": str(max(config.tf_threads, 2)), "OMP_NUM_THREADS": threads}  # fmt: skip
    saved = {key: os.environ.get(key) for key in worker_env}
    os.environ.update(worker_env)
    try:
        if config.dask_address:
            dask_runner = DaskTaskRunner(address=config.dask_address)
        else:
            dask_runner = DaskTaskRunner(cluster_kwargs={"n_workers": config.max_parallel, "threads_per_worker": 1,
                                                         "processes": True, "dashboard_address": None})  # fmt: skip
        with dask_runner as runner:
            yield runner
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def releasing_parts() -> Iterator[None]:
    try:
        yield
    finally:
        release_parts()  # the arrays the thread branches shared


def repeat_config(config: TrainConfig, repeat: int) -> TrainConfig:
    """Repeat r draws a new split and new training seeds: seed + 1000*r."""
    return (
        config if repeat == 0 else config.model_copy(update={"seed": config.seed + 1000 * repeat})
    )


def prepare_features(
    config: TrainConfig, ingested: Any, run: RunRecord, repeat: int = 0
) -> FeatureSet:
    """The stored feature set for these settings: reused when valid, else split, outliers and
    features are run (each behind its gate)."""
    suffix = "" if repeat == 0 else f" (repeat {repeat})"
    run.enter("feature-store" + suffix)
    feature_set = load_valid_feature_set(
        config.store_dir, fingerprint(config, ingested.source_sha256, ingested.streaming)
    )
    if feature_set is not None:
        log.info("reusing feature set %s", feature_set.fingerprint)
        return feature_set
    work = run.work_dir if repeat == 0 else run.work_dir / f"repeat-{repeat}"
    work.mkdir(exist_ok=True)
    run.enter("split" + suffix)
    splits = split(config, ingested, work)
    run.enter("outliers" + suffix)
    outliers = handle_outliers(config, ingested, splits, work)
    run.enter("features" + suffix)
    return build_features(config, ingested, splits, outliers)


def train_branches(names: list[str], feature_sets: list[FeatureSet], config: TrainConfig,
                   out_dir: UPath) -> list[dict[str, Any]]:  # fmt: skip
    """Run one task per strategy and repeat, `config.max_parallel` at a time; a failed branch
    becomes a `failed` record instead of failing the run. Repeat r trains on its own split
    (`feature_sets[r]`) with seed + 1000*r, so the spread over repeats includes split variance."""
    # longest first (the ensemble trains k members), so no long branch starts last and runs alone
    by_cost = sorted(names, key=lambda n: -STRATEGIES[n].members(config) if n in STRATEGIES else 0)
    jobs = [(name, repeat) for repeat in range(config.repeats) for name in by_cost]
    records = []
    with branch_runner(config) as runner, releasing_parts():
        futures = []
        for name, repeat in jobs:
            label = name if repeat == 0 else f"{name}-r{repeat}"
            futures.append((name, repeat, runner.submit(
                train_branch.with_options(task_run_name=f"train-{label}"),
                {"name": name, "feature_set": feature_sets[repeat], "config": repeat_config(config, repeat),
                 "out_dir": str(out_dir if repeat == 0 else out_dir / f"repeat-{repeat}")},
            )))  # fmt: skip
        for name, repeat, future in futures:
            future.wait()
            if future.state.is_completed():
                record = future.result()
            else:
                error = future.state.result(raise_on_failure=False)
                record = error.record if isinstance(error, BranchFailed) else {
                    "strategy": name, "status": "failed", "eligible": name != REFERENCE,
                    "error": f"{type(error).__name__}: {error}"}  # fmt: skip
            records.append(record | {"repeat": repeat})
    return records


def _flow_run_name() -> str:
    config = flow_run.parameters.get("config")
    data = config.data if isinstance(config, TrainConfig) else (config or {}).get("data", "data")
    return f"train-{Path(str(data)).name.split('.')[0]}-{flow_run.scheduled_start_time:%Y-%m-%d}"


DEFAULT_CONFIG = TrainConfig()  # the built-in dataset with every default; never mutated


@flow(name="imbalance-train", flow_run_name=_flow_run_name, log_prints=True)
def train_flow(config: TrainConfig = DEFAULT_CONFIG) -> TrainResult:
    """Validated ingestion -> split -> outlier handling -> stored features, each behind a gate ->
    one training branch per strategy -> selection on the validation tuning half."""
    finish_preloading()  # the command line's background imports, before any step imports them
    strategies = resolve_strategies(config.strategies)  # unknown names fail before any work
    configure_tensorflow(config.tf_threads)  # before TensorFlow initialises: branches share 2 cores
    run = RunRecord(config=config, flow_run_id=str(flow_run.id) if flow_run.id else None)
    log.info("run %s: data %s -> %s", run.run_id, config.data, run.run_dir)
    try:
        run.enter("ingest")
        reason = streaming_reason(config)  # data larger than --memory-budget: out of core
        if reason:
            log.info("out-of-core data path: %s", reason)
        ingested = (ingest_streaming(config, run.work_dir, reason) if reason
                    else ingest(config, run.work_dir))  # fmt: skip
        feature_sets = [
            prepare_features(repeat_config(config, r), ingested, run, r)
            for r in range(config.repeats)
        ]
        feature_set = feature_sets[0]
        run.enter("train")
        records = train_branches(
            [*strategies, REFERENCE], feature_sets, config, run.staging / "branches"
        )
        run.enter("select")
        primary = [r for r in records if r["repeat"] == 0]
        ranked, selected = select(primary, config.rank_by)
        if selected is None:
            errors = "; ".join(
                f"{r['strategy']}: {r['error']}" for r in primary if r["status"] != "ok"
            )
            raise StrategyError(f"every strategy failed: {errors}")
        repeats = summarize_repeats(records, METRIC_KEYS[:-1]) if config.repeats > 1 else None
        metrics = {
            "run_id": run.run_id, "flow_run_id": run.flow_run_id,
            "config": config.model_dump(mode="json"), "data_fingerprint": feature_set.fingerprint,
            "rank_by": config.rank_by, "selected": selected, "strategies": ranked, "repeats": repeats,
        }  # fmt: skip
        write_json(run.staging / "metrics.json", metrics)
        write_leaderboard(run.staging / "leaderboard.csv", ranked, config.rank_by)
        log.info(
            "selected %s (ranked on the validation tuning half by %s)", selected, config.rank_by
        )
        run.enter("compare")
        branches = run.staging / "branches"
        comparison, verdict, operating = compare_with_baseline(
            branches, ranked, selected, config, ingested.raw_path
        )
        chosen = next(r for r in ranked if r["strategy"] == selected)
        run.enter("export")
        export_model(chosen, feature_set, config, branches, run.staging / "model", run.run_id)
        seen = seen_rows(ingested.raw_path, feature_set, feature_set.preprocessing(),
                         run.staging / "seen_rows.parquet")  # fmt: skip
        log.info(verdict.replace("**", ""))
        model_name = config.resolved_model_name(feature_set.manifest["target"])
        with locked(config.registry_dir / f"{model_name}.json"):  # concurrent runs decide in turn
            run.enter("champion")
            decision = challenge(
                config, model_name, feature_set, ingested.raw_path, branches, chosen,
                ingested.roles.id,
            )  # fmt: skip
            log.info("champion/challenger: %s (%s)", decision["action"], decision["reason"])
            run.enter("report")
            write_report(run.staging / "report.html", run.snapshot(ingest=ingested.model_dump(exclude={"raw_path"}), feature_set_reused=feature_set.reused),
                         metrics, feature_set.manifest, branches, comparison, verdict, operating, repeats,
                         decision)  # fmt: skip
            run_dir = run.succeed(
                selected=selected,
                verdict=verdict,
                comparison=comparison,
                champion_decision=decision,
                data_fingerprint=feature_set.fingerprint,
                feature_set=feature_set.path,
                feature_set_reused=feature_set.reused,
                ingest=ingested.model_dump(exclude={"raw_path"}),
            )
            registry = record_decision(config.registry_dir, model_name, run.run_id, run_dir / "model", selected,
                                       {k: chosen[k] for k in ("pr_auc", "roc_auc", "f1", "precision", "recall")},
                                       decision, run_dir / seen.name)  # fmt: skip
    except BaseException as exc:
        if run.completed:
            raise  # the run's files are in place; the registry write failed
        run.fail(exc)
        raise
    publish_artifacts(metrics, verdict, run_dir / "report.html", registry, decision)
    return TrainResult(
        run_id=run.run_id,
        run_dir=str(run_dir),
        feature_set=feature_set,
        preprocessing_path=str(feature_set.location / "preprocessing.json"),
        selected=selected,
        metrics_path=str(run_dir / "metrics.json"),
        model_dir=str(run_dir / "model"),
        report_path=str(run_dir / "report.html"),
        registry=registry,
    )


# --- command line ----------------------------------------------------------------------------

EXAMPLES = """\
examples:
  python -m flows.train                                   # built-in breast cancer data
  python -m flows.train --data creditcard.csv.gz --target Class --positive 1
  python -m flows.train --data train.csv.gz --target Response --positive 1 --id id \\
      --categorical Gender,Vehicle_Age,Vehicle_Damage
  python -m flows.train --data bank-full.csv.gz --sep ';' --target y --positive yes \\
      --categorical job,marital,education,default,housing,loan,contact,month,poutcome
  python -m flows.train --config run.yaml --seed 7         # file settings, flags override

exit codes: 0 success, 2 bad input or a failed gate, 1 internal error
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.train",
        description="Train one Keras model per balancing strategy on imbalanced tabular data and "
        "report which strategy and threshold to ship.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML or JSON file of settings (flags override it)")
    for name, field in TrainConfig.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else default
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=argparse.SUPPRESS,
            metavar=name.upper(),
            help=f"{field.description or ''} (default: {shown})".strip().replace("%", "%%"),
        )
    return parser


def config_from_args(argv: list[str] | None) -> TrainConfig:
    args = vars(build_parser().parse_args(argv))
    config_file = args.pop("config", None)
    settings: dict[str, Any] = load_config_file(config_file) if config_file else {}
    settings.update(args)
    return TrainConfig(**settings)


def _print_validation_error(exc: ValidationError) -> None:
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "config"
        print(f"error: --{field.replace('_', '-')}: {error['msg']}", file=sys.stderr)


_PRELOAD: list[threading.Thread] = []


def preload_heavy_modules() -> None:
    """Import TensorFlow and Great Expectations on a background thread. The command line calls
    this just before the flow: the imports (~8 s on 2 cores) then overlap Prefect's temporary-
    server start-up, during which this process mostly waits. The flow joins the thread before its
    first step (`finish_preloading`): two threads importing one package at once can see it half
    initialised. Importing does not start TensorFlow's runtime, so its thread pools can still be
    set afterwards."""

    def load() -> None:
        for module in ("tensorflow", "great_expectations"):
            try:
                importlib.import_module(module)
            except Exception:  # the flow imports it again and reports the error properly
                log.debug("preloading %s failed", module, exc_info=True)

    thread = threading.Thread(target=load, name="preload-imports", daemon=True)
    thread.start()
    _PRELOAD.append(thread)


def finish_preloading() -> None:
    while _PRELOAD:
        _PRELOAD.pop().join()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(argv)
        preflight_training(config)  # header-level checks, before any server starts
    except ValidationError as exc:
        _print_validation_error(exc)
        return 2
    except ImbalanceFlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    preload_heavy_modules()
    try:
        with tags("imbalance", f"data:{Path(config.data).name.split('.')[0]}"):
            result = train_flow(config)
    except ImbalanceFlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception:  # an internal error: show the traceback, exit 1
        traceback.print_exc()
        return 1
    print(json.dumps({"run_id": result.run_id, "run_dir": result.run_dir, "selected": result.selected,
                      "report": result.report_path, "model": result.model_dir,
                      "registry": result.registry, "feature_set": result.feature_set.path}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
