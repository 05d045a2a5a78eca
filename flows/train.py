"""The training flow and its command line: `python -m flows.train --help`."""

from __future__ import annotations

import sys

if __name__ == "__main__":  # refuse a bad file or flag in ~2 s, before the heavy imports below
    from tasks.preload import pause_collection

    pause_collection()  # no garbage collection while modules load (tasks.preload)
    from flows.cli import refuse_bad_training_input_early  # (flows/__init__ set the log levels)

    refuse_bad_training_input_early(sys.argv[1:])
    from flows.server import start_server_early

    start_server_early()  # Prefect's temporary server starts while the imports below run

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, tags
from prefect.context import TagsContext
from prefect.runtime import flow_run
from pydantic import BaseModel
from upath import UPath

from flows.cli import build_config, exit_now, parse_train_args, run_command
from flows.console import (
    configure_logging,
    live_progress,
    print_summary,
    run_log,
)
from flows.server import (
    heartbeats_only_to_a_lasting_server,
    lasting_server,
    start_temporary_server,
)
from tasks import events, out_of_core, preload
from tasks.branches import Selection, repeat_config, select_strategy, train_branches
from tasks.champion import challenge, seen_rows
from tasks.compare import compare_with_baseline
from tasks.config import TrainConfig
from tasks.export import export_model
from tasks.features import FeatureSet, build_features, fingerprint, load_valid_feature_set
from tasks.ingest import IngestResult, ingest
from tasks.lookahead import trains_nothing
from tasks.outliers import OutlierResult, handle_outliers
from tasks.preflight import preflight_training
from tasks.records import BoardLine
from tasks.registry import SEEN_ROWS_FILE, record_decision, registry_lock
from tasks.report import publish_artifacts, write_report
from tasks.runs import RUN_LOG, RunRecord
from tasks.split import SplitResult, split
from tasks.strategies import REFERENCE, resolve_strategies
from tasks.train import board_lines

log = logging.getLogger("flows.train")


class TrainResult(BaseModel):
    """What a successful run hands to callers (and later flows)."""

    run_id: str
    run_dir: str
    feature_set: FeatureSet
    preprocessing_path: str
    selected: str | None
    threshold: float | None
    rank_by: str
    leaderboard: list[BoardLine]
    verdict: str
    metrics_path: str
    model_dir: str
    report_path: str
    run_log_path: str
    registry: dict[str, Any]
    flow_run_url: str | None = None  # when a lasting Prefect server shows the run

    @classmethod
    def of(
        cls,
        run_dir: UPath,
        feature_set: FeatureSet,
        chosen: Selection,
        verdict: str,
        registry: dict[str, Any],
        rank_by: str,
    ) -> TrainResult:
        return cls(
            run_id=run_dir.name,
            run_dir=str(run_dir),
            feature_set=feature_set,
            preprocessing_path=str(feature_set.location / "preprocessing.json"),
            selected=chosen.selected,
            threshold=chosen.chosen["threshold"],
            rank_by=rank_by,
            leaderboard=board_lines(chosen.ranked, rank_by),
            verdict=verdict,
            metrics_path=str(run_dir / "metrics.json"),
            model_dir=str(run_dir / "model"),
            report_path=str(run_dir / "report.html"),
            run_log_path=str(run_dir / RUN_LOG),
            registry=registry,
            flow_run_url=_flow_run_url(),
        )


@dataclass(frozen=True)
class DataPath:
    """The stages of one data path. Both paths take the same arguments, share the split and
    the fit helpers, and write the same feature-store layout."""

    name: str
    ingest: Callable[[TrainConfig, Path], IngestResult]
    split: Callable[..., SplitResult]
    handle_outliers: Callable[..., OutlierResult]
    build_features: Callable[..., FeatureSet]


IN_MEMORY = DataPath("in memory", ingest, split, handle_outliers, build_features)
OUT_OF_CORE = DataPath(
    "out of core",
    out_of_core.ingest,
    out_of_core.split,
    out_of_core.handle_outliers,
    out_of_core.build_features,
)


def data_path(config: TrainConfig) -> DataPath:
    """The one place the data path is chosen: out of core when the data would exceed
    --memory-budget in memory, else in memory."""
    reason = out_of_core.reason(config)
    if reason is None:
        return IN_MEMORY
    log.info("out-of-core data path: %s", reason)
    return OUT_OF_CORE


def prepare_feature_sets(
    stages: DataPath, config: TrainConfig, ingested: IngestResult, run: RunRecord
) -> list[FeatureSet]:
    """One feature set per repeat (repeat r draws its own split with seed + 1000*r)."""
    return [
        prepare_features(stages, repeat_config(config, r), ingested, run, r)
        for r in range(config.repeats)
    ]


def prepare_features(
    stages: DataPath, config: TrainConfig, ingested: IngestResult, run: RunRecord, repeat: int = 0
) -> FeatureSet:
    """The stored feature set for these settings: reused when valid, else split, outliers and
    features are run (each behind its gate)."""
    suffix = "" if repeat == 0 else f" (repeat {repeat})"
    with run.stage("feature-store" + suffix):
        address = fingerprint(config, ingested.source_sha256, ingested.out_of_core)
        feature_set = load_valid_feature_set(config.store_dir, address)
    if feature_set is not None:
        log.info("reusing feature set %s", feature_set.fingerprint)
        return feature_set
    work = run.work_dir if repeat == 0 else run.work_dir / f"repeat-{repeat}"
    work.mkdir(exist_ok=True)
    with run.stage("split" + suffix):
        splits = stages.split(config, ingested, work)
    with run.stage("outliers" + suffix):
        outliers = stages.handle_outliers(config, ingested, splits, work)
    with run.stage("features" + suffix):
        return stages.build_features(config, ingested, splits, outliers)


def _flow_run_name() -> str:
    """`train-<data>-<start time>-<id>`: unique, and the run directory's id in the UI."""
    config = flow_run.parameters.get("config")
    data = config.data if isinstance(config, TrainConfig) else (config or {}).get("data", "data")
    started = f"{flow_run.scheduled_start_time:%Y%m%dT%H%M%S}"
    short = (flow_run.id or "").replace("-", "")[:8]
    return f"train-{Path(str(data)).name.split('.')[0]}-{started}-{short}"


def _flow_run_url() -> str | None:
    """This flow run's page in the UI of a server that outlives the run (else None)."""
    from prefect.utilities.urls import url_for

    if not flow_run.id or not lasting_server():
        return None
    return url_for("flow-run", obj_id=flow_run.id)


DEFAULT_CONFIG = TrainConfig()  # the built-in dataset with every default; never mutated


def untagged_task_runs(body: Callable[..., Any]) -> Callable[..., Any]:
    """A flow body whose task runs get no tags, while the flow run keeps its own (the UI filters
    runs by them; the flow run is created before its body runs). For a task run with tags
    Prefect asks the server for a concurrency slot per tag set: on a 2-core machine the first
    request of a set took 2-5 s, three times per run; a task without tags asks nothing
    (docs/performance.md). Limit concurrent runs with a work pool's or a deployment's
    concurrency instead."""

    @functools.wraps(body)
    def run(*args: Any, **kwargs: Any) -> Any:
        with TagsContext(current_tags=set()):
            return body(*args, **kwargs)

    return run


@flow(name="imbalance-train", flow_run_name=_flow_run_name, log_prints=True)
@untagged_task_runs
def train_flow(config: TrainConfig = DEFAULT_CONFIG) -> TrainResult:
    """Validated ingestion -> split -> outlier handling -> stored features, each behind a gate ->
    one training branch per strategy -> selection on the validation tuning half."""
    strategies = resolve_strategies(config.strategies)  # unknown names fail before any work
    run = RunRecord(config=config, flow_run_id=str(flow_run.id) if flow_run.id else None)
    branches = run.staging / "branches"
    with run, run_log(run.log_path, run.flow_run_id):  # on an error: run.json and gx/
        with run.stage("ingest"):
            stages = data_path(config)
            ingested = stages.ingest(config, run.work_dir)
            run.note(ingest=ingested.model_dump(exclude={"raw_path"}))
        feature_sets = prepare_feature_sets(stages, config, ingested, run)
        feature_set = feature_sets[0]
        run.note(**feature_set.run_facts())
        with run.stage("train"):  # TensorFlow is configured before a network trains
            records = train_branches([*strategies, REFERENCE], feature_sets, config, branches)
        with run.stage("select"):
            chosen = select_strategy(records, config, feature_set, run, ingested.raw_path)
        with run.stage("compare"):
            versus = compare_with_baseline(
                branches, chosen.ranked, chosen.selected, config, ingested.raw_path, chosen.evidence
            )
        with run.stage("export"):
            identity = export_model(
                chosen.chosen, feature_set, config, branches, run.staging / "model", run.run_id
            )
            seen_rows(ingested.raw_path, feature_set, run.staging / SEEN_ROWS_FILE)
        model_name = config.resolved_model_name(feature_set.manifest["target"])
        with registry_lock(config.registry_dir, model_name):  # concurrent runs decide in turn
            with run.stage("champion"):
                decision = challenge(
                    config, model_name, feature_set, ingested, branches, chosen.chosen, identity
                )
            with run.stage("report"):
                preload.finish("matplotlib.pyplot")
                write_report(
                    run.staging / "report.html",
                    run.snapshot(),
                    chosen.metrics,
                    feature_set,
                    branches,
                    versus,
                    decision,
                )
            run_dir = run.succeed(
                selected=chosen.selected,
                verdict=versus[1],
                comparison=versus[0],
                reference_comparison=versus[3],
                champion_decision=decision,
            )
            registry = record_decision(
                config.registry_dir, model_name, run_dir, decision, config.tracking_uri
            )
    log.info(versus[1].replace("**", ""))
    events.decided(decision, model_name, run_dir)  # automations react to a promotion
    publish_artifacts(chosen.metrics, versus[1], run_dir, registry, decision, feature_set)
    return TrainResult.of(run_dir, feature_set, chosen, versus[1], registry, config.rank_by)


# --- command line ----------------------------------------------------------------------------


# imported in the background before the flow starts, which waits for them: the data steps
# import scikit-learn, and Great Expectations (through altair) imports narwhals, which
# scikit-learn imports too; two threads importing them at once can deadlock (tasks.preload).
# Once they are in, TensorFlow's and pyplot's imports share no package with the steps' imports
# but the standard library's bdb (checked by listing sys.modules)
SHARED_IMPORTS = ("sklearn", "great_expectations")


def preload_heavy_modules(tensorflow: bool = True) -> None:
    """Import scikit-learn and Great Expectations, then TensorFlow, then matplotlib's pyplot on
    a background thread (tasks.preload). The command line calls this before it launches
    Prefect's temporary server and waits for the first two before the flow: the imports (~8 s
    on 2 cores) overlap the server's start-up and, TensorFlow's, the data stages. TensorFlow is
    left out when the run will likely need none (tasks.lookahead): a run on unchanged data
    then never imports it (~4 s of a core)."""
    heavy = (*SHARED_IMPORTS, "tensorflow", "matplotlib.pyplot")  # in the order needed
    preload.start(tuple(m for m in heavy if tensorflow or m != "tensorflow"))


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.train`: the run, then its summary (or, with --json, its JSON)."""
    args, shown = parse_train_args(argv)
    configure_logging(shown.verbosity)

    def body() -> dict[str, Any] | None:
        config = build_config(args)
        preflight_training(config)  # header-level checks, before any server starts
        out_of_core_path = out_of_core.reason(config) is not None
        preload_heavy_modules(tensorflow=not trains_nothing(config, out_of_core_path))
        start_temporary_server()
        for module in SHARED_IMPORTS:  # the steps import these too: not at the same time
            preload.finish(module)
        data_tag = f"data:{Path(config.data).name.split('.')[0]}"
        with (
            tags("imbalance", data_tag),
            live_progress(shown.verbosity),
            heartbeats_only_to_a_lasting_server(),
        ):
            result = train_flow(config)
        answer = {
            "run_id": result.run_id,
            "run_dir": result.run_dir,
            "selected": result.selected,
            "threshold": result.threshold,
            "report": result.report_path,
            "model": result.model_dir,
            "registry": result.registry,
            "feature_set": result.feature_set.path,
            "run_log": result.run_log_path,
            "flow_run_url": result.flow_run_url,
        }
        if shown.json:
            return answer
        print_summary(result)
        return None

    return run_command(body)


if __name__ == "__main__":
    exit_now(main())
