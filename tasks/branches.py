"""The strategy branches: one Prefect task per strategy and repeat on the chosen task runner
(threads, or a Dask cluster through prefect-dask), then selection on the validation tuning half
and the run's `metrics.json` and `leaderboard.csv`."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prefect.task_runners import ThreadPoolTaskRunner
from upath import UPath

from tasks import gx_run, progress
from tasks.compare import selection_text, settle_selection, summarize_repeats
from tasks.config import TrainConfig
from tasks.errors import StrategyError
from tasks.features import FeatureSet
from tasks.progress import progress_key
from tasks.records import SCALAR_METRICS, SCHEMA_VERSION, RunMetrics
from tasks.runs import RunRecord
from tasks.storage import write_json
from tasks.strategies import REFERENCE, STRATEGIES
from tasks.train import (
    BranchFailed,
    release_parts,
    select,
    train_branch,
    train_stack,
    write_leaderboard,
)

log = logging.getLogger(__name__)


@contextmanager
def branch_runner(config: TrainConfig, reference_beside: bool = False) -> Iterator[Any]:
    """The task runner the branches run on: a thread pool here, or a Dask cluster through
    prefect-dask. Dask workers are pointed at this run's Prefect API (otherwise each starts a
    server of its own) and get `tf_threads` TensorFlow threads each; the variables they inherit
    are restored in this process afterwards. With `reference_beside` the thread pool has one
    thread more, so the reference (a few seconds of gradient boosting) trains beside the
    stacked programs instead of waiting for one to end and then running on with the other."""
    if config.runner == "threads":
        workers = config.max_parallel + reference_beside
        with ThreadPoolTaskRunner(max_workers=workers) as runner:
            yield runner
        return
    from prefect.client.orchestration import get_client
    from prefect_dask import DaskTaskRunner

    with get_client(sync_client=True) as client:
        api_url = str(client.api_url).rstrip("/")
    threads = str(config.tf_threads)
    worker_env = {
        "PREFECT_API_URL": api_url,
        "TF_NUM_INTRAOP_THREADS": threads,
        "TF_NUM_INTEROP_THREADS": str(max(config.tf_threads, 2)),
        "OMP_NUM_THREADS": threads,
    }
    saved = {key: os.environ.get(key) for key in worker_env}
    os.environ.update(worker_env)
    try:
        if config.dask_address:
            dask_runner = DaskTaskRunner(address=config.dask_address)
        else:
            dask_runner = DaskTaskRunner(
                cluster_kwargs={
                    "n_workers": config.max_parallel,
                    "threads_per_worker": 1,
                    "processes": True,
                    "dashboard_address": None,
                }
            )
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


def trains_stacked(config: TrainConfig, feature_set: FeatureSet) -> bool:
    """Whether the strategies' networks train side by side in one program (config.trainer):
    not when the training split is streamed from the store, which only Keras's loop reads."""
    streamed = bool(feature_set.manifest.get("out_of_core"))
    if config.trainer == "stacked" and streamed:
        log.warning("--trainer stacked: the training split is streamed, so strategies train apart")
    stacked = config.trainer != "separate" and not streamed
    if config.search and not stacked:
        log.warning(
            "--search %d: only the stacked trainer searches; training with the defaults",
            config.search,
        )
    return stacked


PARALLEL_STACK_ROWS = 50_000  # from this many training rows, stacks train side by side


def stack_groups(names: list[str], config: TrainConfig, train_rows: int) -> list[list[str]]:
    """The strategies of each stacked program. One program on small data, where a step costs
    less than Python's share of it; on large data `max_parallel` programs, which run at once
    (TensorFlow releases Python's lock for a whole check interval of steps). Strategies that
    share a network (ensemble member 0 is `undersample`) stay in one program; the programs are
    balanced by their number of networks (docs/performance.md)."""
    clusters: list[tuple[set[str], set[tuple]]] = []
    for name in names:
        strategy = STRATEGIES[name]
        keys = {
            strategy.trains_like(config.seed + m)
            for m in range(strategy.members(config.ensemble_k))
        }
        joined = [c for c in clusters if c[1] & keys]
        for c in joined:
            clusters.remove(c)
        clusters.append(
            ({name, *(n for c in joined for n in c[0])}, keys.union(*(c[1] for c in joined)))
        )
    count = min(config.max_parallel if train_rows >= PARALLEL_STACK_ROWS else 1, len(clusters))
    sizes, groups = [0] * count, [[] for _ in range(count)]
    for members, keys in sorted(clusters, key=lambda c: -len(c[1])):
        lightest = sizes.index(min(sizes))
        sizes[lightest] += len(keys)
        groups[lightest] += sorted(members, key=names.index)
    return groups


def _branch_jobs(
    names: list[str], feature_set: FeatureSet, config: TrainConfig, out_dir: UPath, repeat: int
) -> list[tuple[list[str], Any, dict[str, Any]]]:
    """The tasks of one repeat, longest first, so no long one starts last and runs alone: one
    stacked task for the networks (or one task per strategy) and one for the reference."""
    params = {
        "feature_set": feature_set,
        "config": repeat_config(config, repeat),
        "out_dir": str(out_dir if repeat == 0 else out_dir / f"repeat-{repeat}"),
        "repeat": repeat,
        "gx_dir": str(project.root) if (project := gx_run.current()) else None,
    }
    suffix = "" if repeat == 0 else f"-r{repeat}"
    neural = [n for n in names if n in STRATEGIES]
    rest = [n for n in names if n not in STRATEGIES]
    jobs = []
    if neural and trains_stacked(config, feature_set):
        train_rows = feature_set.manifest["splits"]["train"]["rows"]
        groups = stack_groups(neural, config, train_rows)
        for i, group in enumerate(groups):
            label = f"train-stack{'' if len(groups) == 1 else f'-{i + 1}'}{suffix}"
            stack = train_stack.with_options(task_run_name=label)
            jobs.append((group, stack, params | {"names": group}))
    else:
        rest = sorted(neural, key=lambda n: -STRATEGIES[n].members(config.ensemble_k)) + rest
    for name in rest:
        branch = train_branch.with_options(task_run_name=f"train-{name}{suffix}")
        jobs.append(([name], branch, params | {"name": name}))
    return jobs


def _failed_records(names: list[str], error: BaseException | Any) -> list[dict[str, Any]]:
    if isinstance(error, BranchFailed):
        return [error.record]
    return [
        {
            "strategy": name,
            "status": "failed",
            "eligible": name != REFERENCE,
            "error": f"{type(error).__name__}: {error}",
        }
        for name in names
    ]


def train_branches(
    names: list[str], feature_sets: list[FeatureSet], config: TrainConfig, out_dir: UPath
) -> list[dict[str, Any]]:
    """Train every strategy and repeat, `config.max_parallel` tasks at a time; a failed branch
    becomes a `failed` record instead of failing the run. Repeat r trains on its own split
    (`feature_sets[r]`) with seed + 1000*r, so the spread over repeats includes split variance."""
    records = []
    lines = [progress_key(name, r) for r in range(config.repeats) for name in names]
    jobs = [
        (job_names, repeat, fn, params)
        for repeat in range(config.repeats)
        for job_names, fn, params in _branch_jobs(
            names, feature_sets[repeat], config, out_dir, repeat
        )
    ]
    beside = REFERENCE in names and any(fn.name == train_stack.name for _, _, fn, _ in jobs)
    with (
        progress.BOARD.publishing(lines),
        branch_runner(config, beside) as runner,
        releasing_parts(),
    ):
        futures = [
            (job_names, repeat, runner.submit(fn, params)) for job_names, repeat, fn, params in jobs
        ]
        for job_names, repeat, future in futures:
            future.wait()
            if future.state.is_completed():
                result = future.result()
                done = result if isinstance(result, list) else [result]
            else:
                done = _failed_records(job_names, future.state.result(raise_on_failure=False))
            for record in done:  # a branch run in another process reports its end here
                progress.finish(progress_key(record["strategy"], repeat), record["status"])
            records += [record | {"repeat": repeat} for record in done]
    return records


@dataclass(frozen=True)
class Selection:
    """The ranked branch records of the first repeat, the selected strategy and its record."""

    ranked: list[dict[str, Any]]
    selected: str
    chosen: dict[str, Any]
    repeats: dict[str, Any] | None
    metrics: dict[str, Any]
    evidence: dict[str, Any] | None = None  # why the leader was (not) selected: settle_selection


def select_strategy(
    records: list[dict[str, Any]],
    config: TrainConfig,
    feature_set: FeatureSet,
    run: RunRecord,
    raw_path: str,
) -> Selection:
    """Rank the first repeat's branches on the validation tuning half, select the best eligible
    one unless it is not reliably better than baseline (`settle_selection`), and write
    `metrics.json` and `leaderboard.csv` into the run's directory. Every branch failing is an
    error naming each branch's cause."""
    primary = [r for r in records if r["repeat"] == 0]
    ranked, leader = select(primary, config.rank_by)
    if leader is None:
        errors = "; ".join(f"{r['strategy']}: {r['error']}" for r in primary if r["status"] != "ok")
        raise StrategyError(f"every strategy failed: {errors}")
    selected, evidence = settle_selection(
        leader, ranked, config, run.staging / "branches", raw_path
    )
    repeats = summarize_repeats(records, list(SCALAR_METRICS)) if config.repeats > 1 else None
    metrics = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run.run_id,
        "flow_run_id": run.flow_run_id,
        "config": config.model_dump(mode="json"),
        "data_fingerprint": feature_set.fingerprint,
        "rank_by": config.rank_by,
        "selected": selected,
        "selection": evidence,
        "strategies": ranked,
        "repeats": repeats,
    }
    write_json(run.staging / "metrics.json", RunMetrics.check(metrics))
    write_leaderboard(run.staging / "leaderboard.csv", ranked, config.rank_by)
    log.info("selected %s (ranked on the validation tuning half by %s)", selected, config.rank_by)
    if evidence is not None:
        log.info(selection_text(evidence))
    chosen = next(r for r in ranked if r["strategy"] == selected)
    return Selection(ranked, selected, chosen, repeats, metrics, evidence)
