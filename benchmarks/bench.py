"""Benchmarks: whole-process timings and peak memory of the training flow.

    python benchmarks/bench.py                     # every section
    python benchmarks/bench.py --quick             # skips the 5M-row scaling step
    python benchmarks/bench.py --sections default,overhead

Sections
- default:  `python -m flows.train` on the built-in data, all strategies (wall, start-up, steps),
            side by side with the seed article's one-model script (../shared/bench/seed_gfg.py):
            interleaved rounds with no Prefect server running (cold), then against a running
            server (warm); medians and the ratios run / script.
- insurance: the insurance cross-sell data from ../shared/data, all strategies, end to end.
- scaling:  generated data of the insurance shape (100k, 1M, 5M rows), epochs capped, with
            --memory-budget 1GB (5M rows take the out-of-core path, where SMOTE is skipped): time
            per strategy branch and peak memory of the run, so growth is visible.
- wide:     569 rows x 5,000 numeric columns, baseline only, 2 epochs, end to end.
- refuse:   how long `python -m flows.train` takes to refuse a file with a misspelt target column
            (exit 2): the header checks run before Prefect, TensorFlow and scikit-learn load.
- quality:  the selected strategy's test PR-AUC against HistGradientBoosting and logistic
            regression on the same split, over the datasets of benchmarks/quality.py
            (--quality-datasets, --quality-resplits, --quality-args for ablations).
- ablation: the default network with each ingredient off in turn (benchmarks/quality.py), in
            one process on the stored features; --ablations picks variants.
- overhead: the same strategies trained by a plain Python loop on the stored features (no Prefect)
            versus the flow against a running Prefect server, and branches in parallel versus one
            after another; --overhead-rounds interleaved rounds, compared by their medians.
Each measurement is a separate process; peak memory is the child's maximum RSS (getrusage) and
the peak of the RSS summed over its process tree (psutil, sampled every 0.25 s).
Prints a table and writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import quality  # benchmarks/quality.py, beside this file

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
INSURANCE = SHARED / "insurance_cross_sell" / "train.csv.gz"
INSURANCE_ARGS = [  # the generated data of the insurance shape (section scaling)
    "--target",
    "Response",
    "--positive",
    "1",
    "--id",
    "id",
    "--categorical",
    "Gender,Vehicle_Age,Vehicle_Damage",
]
# the real file also stores two codes as floats (../shared/data/README.md): categories, as a
# user who read that declares them (before session 13 they were read as numbers)
REAL_INSURANCE_ARGS = [
    *INSURANCE_ARGS[:-1],
    f"{INSURANCE_ARGS[-1]},{','.join(quality.INSURANCE_CODES)}",
]
ENV = os.environ | {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # cold runs: a server the user left running (`make server`, port 4200) is not looked for
    "PREFECT_SERVER_API_PORT": "1",
}


def machine() -> dict[str, Any]:
    with open("/proc/meminfo") as handle:
        total_kb = int(handle.readline().split()[1])
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_gb": round(total_kb / 1024**2, 1),
        "processor": platform.processor() or platform.machine(),
    }


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (MB)."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for process in processes:
        with suppress(psutil.Error):  # ended between the listing and the reading
            total += process.memory_info().rss
    return total / 2**20


def run_process(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a child process; return its wall time, its peak RSS (MB) and the peak of the RSS
    summed over its process tree (the temporary Prefect server, Dask workers), sampled every
    0.25 s."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    child = subprocess.Popen(
        args, cwd=ROOT, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    tree_peak = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal tree_peak
        while not done.wait(0.25):
            tree_peak = max(tree_peak, tree_rss_mb(child.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = child.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {child.returncode}:\n{stderr[-3000:]}")
    # ru_maxrss of children is the largest child so far: only a new maximum is attributable
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(peak / 1024, 1) if peak > before else None,
        "tree_peak_rss_mb": round(tree_peak, 1),
        "stdout": stdout,
    }


def train(output: Path, extra: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run_process(
        [sys.executable, "-m", "flows.train", "--output", str(output), *extra], env
    )
    run = json.loads((output / "latest" / "run.json").read_text())
    metrics = json.loads((output / "latest" / "metrics.json").read_text())
    rows = run["ingest"]["n_rows"]
    branches = {
        r["strategy"]: round(
            (
                datetime.fromisoformat(r["finished_at"]) - datetime.fromisoformat(r["started_at"])
            ).total_seconds(),
            2,
        )
        for r in metrics["strategies"]
        if r.get("started_at") and r.get("finished_at")
    }
    return {
        "rows": rows,
        "wall_s": result["wall_s"],
        "startup_s": round(
            result["wall_s"] - run["seconds"], 2
        ),  # process start, imports, Prefect server
        "flow_s": run["seconds"],
        "steps_s": {s["stage"]: s["seconds"] for s in run["stages"]},
        "branch_s": branches,
        "peak_rss_mb": result["peak_rss_mb"],
        "tree_peak_rss_mb": result["tree_peak_rss_mb"],
        "rows_per_s": round(rows / result["wall_s"], 1),
        "selected": metrics["selected"],
        "test_pr_auc": {r["strategy"]: r.get("pr_auc") for r in metrics["strategies"]},
        "feature_set_reused": run["feature_set_reused"],
        "out_of_core": any("out of core" in note for note in run["ingest"]["notes"]),
        "skipped": [r["strategy"] for r in metrics["strategies"] if r["status"] == "skipped"],
        "batch_size": next(
            (r["schedule"]["batch_size"] for r in metrics["strategies"] if r.get("schedule")), None
        ),
    }


SEED_SCRIPT = ROOT.parent / "shared" / "bench" / "seed_gfg.py"  # one Keras model, as the article
DEFAULT_ROUNDS = 3


@contextmanager
def prefect_server(work: Path) -> Iterator[dict[str, str]]:
    """A Prefect server running for the block (as `prefect server start` would be for a user);
    yields the environment that points a run at it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    home = work / "prefect-home"
    server_env = ENV | {"PREFECT_HOME": str(home), "PREFECT_SERVER_UI_ENABLED": "false"}
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "--port", str(port)],
        env=server_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        # found as a user's `make run` finds `make server`: by Prefect's server address
        yield ENV | {"PREFECT_SERVER_API_PORT": str(port), "PREFECT_HOME": str(home)}
    finally:
        server.terminate()
        server.wait(timeout=30)


def section_default(work: Path, quick: bool) -> dict[str, Any]:
    """The default run against the seed article's one-model script, side by side: rounds of
    (script, run with no server running) interleaved, then runs against a running server;
    medians and their ratios."""
    rounds = 1 if quick else DEFAULT_ROUNDS
    cold_env = ENV | {"PREFECT_HOME": str(work / "prefect-home-cold")}  # a newcomer's first runs
    seed, cold, last = [], [], {}
    for round_ in range(rounds):
        if SEED_SCRIPT.exists():
            seed.append(run_process([sys.executable, str(SEED_SCRIPT), "42"])["wall_s"])
        last = train(work / f"default-{round_}", [], cold_env)
        cold.append(last["wall_s"])
    with prefect_server(work) as env:
        warm = [train(work / f"default-warm-{r}", [], env)["wall_s"] for r in range(rounds)]
    walls = {"seed script (one model)": seed, "default run, cold": cold, "default run, warm": warm}
    medians = {name: statistics.median(v) for name, v in walls.items() if v}
    result: dict[str, Any] = {
        "built-in breast cancer, all strategies (last cold run)": last,
        "whole-process wall times (s)": {"rounds": rounds, **walls},
    }
    if not seed:
        result["seed script"] = f"skipped: {SEED_SCRIPT} not available"
        return result
    base = medians["seed script (one model)"]
    result["ratios"] = {
        f"default run / seed script, {kind} (medians)": round(
            medians[f"default run, {kind}"] / base, 2
        )
        for kind in ("cold", "warm")
    }
    return result


REFUSE_ROUNDS = 5


def section_refuse(work: Path, quick: bool) -> dict[str, Any]:
    bad = work / "misspelt.csv"
    bad.write_text("age,income,churned\n34,51000,no\n51,38000,yes\n")
    args = [sys.executable, "-m", "flows.train", "--data", str(bad), "--target", "churn"]
    walls = []
    for _ in range(REFUSE_ROUNDS):
        start = time.perf_counter()
        done = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True)
        walls.append(round(time.perf_counter() - start, 2))
        if done.returncode != 2 or "churn" not in done.stderr:
            raise RuntimeError(
                f"expected exit 2 naming the column, got {done.returncode}: {done.stderr}"
            )
    return {
        "refuse a misspelt target column (s)": {
            "rounds": REFUSE_ROUNDS,
            "median": statistics.median(walls),
            "every round": walls,
        }
    }


def section_insurance(work: Path, quick: bool) -> dict[str, Any]:
    if not INSURANCE.exists():
        return {"skipped": f"{INSURANCE} not available"}
    first = train(work / "insurance", ["--data", str(INSURANCE), *REAL_INSURANCE_ARGS])
    second = ["--data", str(INSURANCE), *REAL_INSURANCE_ARGS, "--strategies", "baseline"]
    again = train(work / "insurance", second)  # its two branches are the first run's, reused
    with prefect_server(work) as env:  # as a scheduled run finds one: no start-up of its own
        warm = train(work / "insurance", second, env)
    retrained = train(work / "insurance", [*second, "--retrain"])

    def preparation(result: dict[str, Any]) -> float:  # split, outliers, features, store lookup
        return sum(
            result["steps_s"].get(s, 0.0)
            for s in ("feature-store", "split", "outliers", "features")
        )

    return {
        "insurance, all strategies": first,
        "insurance, second run (feature set and trained branches reused), baseline only": again,
        "insurance, second run as above, a Prefect server running": warm,
        "insurance, second run with --retrain (feature set reused), baseline only": retrained,
        "ratios": {
            "feature preparation, first run -> reused (s)": (
                f"{preparation(first):.2f} -> {preparation(again):.2f}"
            )
        },
    }


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Data of the insurance shape: 7 numeric columns, 3 text categoricals, ~12% positives."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    logit = rng.normal(-2.3, 1.0, rows)
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame(
        {
            "id": np.arange(rows),
            "Gender": rng.choice(["Male", "Female"], rows),
            "Age": rng.integers(20, 85, rows) + 5 * y,
            "Driving_License": (rng.random(rows) < 0.998).astype(int),
            "Region_Code": rng.integers(0, 53, rows).astype(float),
            "Previously_Insured": (rng.random(rows) < 0.46 - 0.4 * y).astype(int),
            "Vehicle_Age": rng.choice(["< 1 Year", "1-2 Year", "> 2 Years"], rows),
            "Vehicle_Damage": np.where(rng.random(rows) < 0.4 + 0.5 * y, "Yes", "No"),
            "Annual_Premium": np.round(rng.lognormal(10.3, 0.5, rows), 0),
            "Policy_Sales_Channel": rng.integers(1, 163, rows).astype(float),
            "Vintage": rng.integers(10, 300, rows),
            "Response": y,
        }
    )
    frame.to_parquet(path, index=False)


WIDE_SHAPE = (569, 5000)  # rows x numeric columns


def section_wide(work: Path, quick: bool) -> dict[str, Any]:
    """Many columns: the gates, statistics and preprocessing must scale with cells, not columns."""
    import numpy as np
    import pandas as pd

    rows, columns = WIDE_SHAPE
    rng = np.random.default_rng(0)
    values = rng.normal(size=(rows, columns)).astype("float32")
    frame = pd.DataFrame(values, columns=[f"x{i}" for i in range(columns)])
    frame["y"] = (values[:, :5].sum(axis=1) + rng.normal(size=rows) > 2.5).astype(int)
    path = work / "wide.parquet"
    frame.to_parquet(path, index=False)
    args = ["--data", str(path), "--target", "y", "--positive", "1"]
    args += ["--strategies", "baseline", "--epochs", "2"]
    return {f"{rows} rows x {columns} numeric columns, baseline, 2 epochs": train(work / "w", args)}


SCALING_BUDGET = (
    "1GB"  # 5M rows (~2 GB as pandas tables) take the out-of-core path; SMOTE is skipped there
)


SCALING_ROWS = [100_000, 1_000_000, 5_000_000]
OVERHEAD_ROUNDS = 3


def section_scaling(work: Path, quick: bool) -> dict[str, Any]:
    results = {}
    for rows in [r for r in SCALING_ROWS if not (quick and r > 1_000_000)]:
        data = work / f"generated_{rows}.parquet"
        generate(data, rows)
        results[f"generated {rows:,} rows, all strategies, 2 epochs"] = train(
            work / f"scaling-{rows}",
            [
                "--data",
                str(data),
                *INSURANCE_ARGS,
                "--epochs",
                "2",
                "--memory-budget",
                SCALING_BUDGET,
            ],
        )
        data.unlink()
    return results


PLAIN_LOOP = """
import json, sys, time
from pathlib import Path
from tasks.config import TrainConfig
from tasks.features import load_valid_feature_set
from tasks.model import configure_tensorflow
from tasks.strategies import REFERENCE, STRATEGIES
from tasks.train import shared_parts, train_branch, train_stack
configure_tensorflow(1)  # what the flow uses
config = TrainConfig(**json.loads(sys.argv[1]))
fs = load_valid_feature_set(Path(sys.argv[2]), sys.argv[3])
out = sys.argv[4]
t = time.perf_counter()
shared_parts(fs)  # once, as the flow's tasks share them
train_stack.fn(list(STRATEGIES), fs, config, out)  # the networks side by side, as the flow does
train_branch.fn(REFERENCE, fs, config, out)
print(json.dumps({"train_s": time.perf_counter() - t}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def section_overhead(work: Path, quick: bool) -> dict[str, Any]:
    from tasks.config import TrainConfig

    with prefect_server(work) as env:
        output = work / "overhead"
        train(output, [], env)  # builds the feature set
        run = json.loads((output / "latest" / "run.json").read_text())
        plain_args = [
            sys.executable,
            "-c",
            PLAIN_LOOP,
            json.dumps(run["config"]),
            str(TrainConfig(**run["config"]).store_dir),
            run["data_fingerprint"],
        ]
        # single runs on this machine vary by more than the 10% target: interleave the three
        # variants round by round (so drift hits them alike) and compare medians
        plain, sequential, parallel = [], [], []
        for round_ in range(OVERHEAD_ROUNDS):
            done = run_process([*plain_args, str(work / f"plain-{round_}")])
            plain.append(json.loads(done["stdout"].strip().splitlines()[-1])["train_s"])
            sequential.append(train(output, ["--max-parallel", "1"], env)["steps_s"]["train"])
            parallel.append(train(output, ["--max-parallel", "2"], env)["steps_s"]["train"])
        medians = {
            k: statistics.median(v)
            for k, v in (("plain", plain), ("sequential", sequential), ("parallel", parallel))
        }
        return {
            "train step, median of rounds (s)": {
                "rounds": OVERHEAD_ROUNDS,
                "plain loop, no Prefect": round(medians["plain"], 2),
                "flow against a server, branches one after another": round(
                    medians["sequential"], 2
                ),
                "flow against a server, 2 branches in parallel": round(medians["parallel"], 2),
            },
            "train step, every round (s)": {
                "plain": plain,
                "sequential": sequential,
                "parallel": parallel,
            },
            "ratios": {
                "orchestration overhead (flow train step / plain loop, medians)": round(
                    medians["sequential"] / medians["plain"], 3
                ),
                "parallel speed-up (sequential / parallel train step, medians)": round(
                    medians["sequential"] / medians["parallel"], 3
                ),
            },
        }


QUALITY: dict[str, Any] = {
    "datasets": None,
    "resplits": quality.RESPLITS,
    "args": [],
    "variants": None,
}


def section_quality(work: Path, quick: bool) -> dict[str, Any]:
    """benchmarks/quality.py: the selected strategy against HistGradientBoosting and logistic
    regression, against a running Prefect server (the runs' start-up is not what is measured)."""
    resplits = 1 if quick else QUALITY["resplits"]
    with prefect_server(work) as env:

        def run(output: Path, args: list[str]) -> dict[str, Any]:
            return train(output, args, env)

        return quality.section_quality(run, work, QUALITY["datasets"], resplits, QUALITY["args"])


def section_ablation(work: Path, quick: bool) -> dict[str, Any]:
    """benchmarks/quality.py's ablations: each ingredient of the default network off in turn."""
    resplits = 1 if quick else QUALITY["resplits"]
    return quality.ablation(work, QUALITY["datasets"], resplits, QUALITY["variants"])


SECTIONS = {
    "default": section_default,
    "refuse": section_refuse,
    "wide": section_wide,
    "insurance": section_insurance,
    "scaling": section_scaling,
    "overhead": section_overhead,
    "quality": section_quality,
    "ablation": section_ablation,
}


def print_table(results: dict[str, Any]) -> None:
    print(
        f"\n{'measurement':<62} {'wall s':>8} {'start-up s':>10} {'train s':>8} "
        f"{'peak MB':>8} {'tree MB':>8} {'rows/s':>9}"
    )
    for section, entries in results["sections"].items():
        if section == "ablation":
            print(json.dumps(entries, indent=1))
            continue
        if section == "quality":
            quality.print_quality(entries)
            continue
        for name, r in entries.items():
            if name == "ratios":
                continue
            if not isinstance(r, dict) or "wall_s" not in r:
                print(f"{section}: {name}: {r}")
                continue
            steps = r.get("steps_s", {})
            print(
                f"{name[:62]:<62} {r['wall_s']:>8} {r.get('startup_s', ''):>10} "
                f"{steps.get('train', r.get('train_s', '')):>8} "
                f"{r.get('peak_rss_mb') or '':>8} {r.get('tree_peak_rss_mb') or '':>8} "
                f"{r.get('rows_per_s', ''):>9}"
            )
            if "data docs" in steps:  # the run's GX Data Docs, built as it ends
                print(f"  {'of which Great Expectations Data Docs':<60} {steps['data docs']:>8}")
        if "ratios" in entries:
            for name, value in entries["ratios"].items():
                print(f"  {name}: {value}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="skip the 5M-row scaling step")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS)
    )
    parser.add_argument(
        "--scaling-rows",
        help="comma-separated row counts for the scaling section (default 100000,1000000,5000000)",
    )
    parser.add_argument(
        "--overhead-rounds",
        type=int,
        default=OVERHEAD_ROUNDS,
        help=f"interleaved rounds of the overhead section (default {OVERHEAD_ROUNDS})",
    )
    parser.add_argument(
        "--quality-datasets",
        help="comma-separated dataset names of the quality section (default: all of "
        "benchmarks/quality.py's list)",
    )
    parser.add_argument("--quality-resplits", type=int, default=quality.RESPLITS)
    parser.add_argument(
        "--quality-args",
        default="",
        help="extra flags for every quality run, e.g. '--numeric standard' for an ablation",
    )
    parser.add_argument(
        "--ablations",
        help="comma-separated variants of the ablation section (default: every one in "
        "benchmarks/quality.py's ABLATIONS)",
    )
    args = parser.parse_args()
    if args.ablations:
        QUALITY["variants"] = [v.strip() for v in args.ablations.split(",")]
    if args.quality_datasets:
        QUALITY["datasets"] = [n.strip() for n in args.quality_datasets.split(",")]
    QUALITY["resplits"] = max(1, args.quality_resplits)
    QUALITY["args"] = args.quality_args.split()
    globals()["OVERHEAD_ROUNDS"] = max(1, args.overhead_rounds)
    if args.scaling_rows:
        SCALING_ROWS[:] = [int(r) for r in args.scaling_rows.split(",")]
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(
            f"unknown sections: {', '.join(sorted(unknown))}; valid: {', '.join(SECTIONS)}"
        )
    results: dict[str, Any] = {
        "machine": machine(),
        "started_at": datetime.now(UTC).isoformat(),
        "quick": args.quick,
        "sections": {},
    }
    print(json.dumps(results["machine"]))
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for name in chosen:
            print(f"running {name} ...", flush=True)
            try:
                results["sections"][name] = SECTIONS[name](Path(tmp), args.quick)
            except RuntimeError as exc:  # a failed run: keep the other sections' figures
                results["sections"][name] = {"failed": str(exc)[-2000:]}
                print(f"{name} failed:\n{exc}", file=sys.stderr)
            path.write_text(json.dumps(results, indent=2))  # after every section
    print_table(results)
    print(f"\nwritten: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
