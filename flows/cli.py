"""What the three command lines share: the training flags, the early checks and the one exit-code
mapping (the temporary Prefect server is flows.server).

Exit codes: 0 success; 2 bad input, bad settings or a failed gate (one line naming the cause);
1 an internal error (its traceback). This module imports no Prefect, TensorFlow or scikit-learn at
load time, so `python -m flows.train` can refuse a bad file before those heavy imports.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import ValidationError

from flows.console import Verbosity
from tasks.config import TrainConfig, load_config_file
from tasks.errors import ImbalanceFlowError

TRAIN_EXAMPLES = """\
examples:
  python -m flows.train                                   # built-in breast cancer data
  python -m flows.train --data creditcard.csv.gz --target Class --positive 1
  python -m flows.train --data train.csv.gz --target Response --positive 1 --id id \\
      --categorical Gender,Vehicle_Age,Vehicle_Damage,Region_Code,Policy_Sales_Channel
  python -m flows.train --data bank-full.csv.gz --sep ';' --target y --positive yes \\
      --categorical job,marital,education,default,housing,loan,contact,month,poutcome
  python -m flows.train --config run.yaml --seed 7         # file settings, flags override

exit codes: 0 success, 2 bad input or a failed gate, 1 internal error
"""


# Every TrainConfig field, in the --help group it belongs to (a new field must be placed here).
FLAG_GROUPS: dict[str, tuple[str, ...]] = {
    "data": (
        *("data", "sep", "target", "positive", "id", "drop", "categorical", "impute"),
        "max_categories",
    ),
    "split": ("split", "split_by", "group", "repeats"),
    "features": ("outlier", "outlier_z", "outlier_iqr_k", "numeric_transform"),
    "model": (
        *("strategies", "hidden", "dropout", "weight_decay", "linear_skip", "learning_rate"),
        *("batch_size", "epochs", "patience", "min_steps", "min_patience_steps", "ensemble_k"),
        *("lr_schedule", "numeric_embedding", "category_embedding", "search"),
    ),
    "thresholds and selection": (
        *("objective", "rank_by", "selection", "allow_reference_champion", "bootstrap"),
    ),
    "gates": (
        *("min_class_count", "min_positives_per_split", "min_positives_per_half"),
        *("split_ratio_tolerance", "max_removed_share", "scale_tolerance"),
        *("drift_psi_warn", "drift_psi_fail", "drift_ks_warn", "drift_rate_ratio_limit"),
        "drift_action",
    ),
    "registry and storage": (
        *("model_name", "promote_metric", "promote_margin", "runs_dir", "store"),
        *("tracking_uri", "saved_model", "data_docs"),
    ),
    "runtime": (
        *("runner", "max_parallel", "dask_address", "trainer", "tf_threads", "memory_budget"),
        *("retrain", "seed"),
    ),
}
# old flag names that still work, with a warning: old -> new
DEPRECATED_FLAGS = {"--output": "--runs-dir"}


class DeprecatedAlias(argparse.Action):
    """Stores the value like the flag it stands for, and says the old name is deprecated."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
        print(
            f"warning: {option_string} is deprecated; use {DEPRECATED_FLAGS[option_string]}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_deprecated_aliases(parser: argparse.ArgumentParser | Any, dest: str, new: str) -> None:
    for old, current in DEPRECATED_FLAGS.items():
        if current == new:
            parser.add_argument(
                old,
                dest=dest,
                action=DeprecatedAlias,
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )


def _choices(name: str, annotation: Any) -> tuple[str, ...] | None:
    """The values an enumerated setting takes (strategies: the registered ones)."""
    if name == "strategies":
        from tasks.strategies import STRATEGIES

        return tuple(STRATEGIES)
    literal = [a for a in (annotation, *get_args(annotation)) if get_origin(a) is Literal]
    return tuple(str(v) for v in get_args(literal[0])) if literal else None


def _value_type(annotation: Any) -> Callable[[str], Any] | None:
    """int or float for a plain or optional number; None (a string, parsed by the config)."""
    options = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ()
    kinds = {a for a in (annotation, *options) if a in (int, float)}
    return kinds.pop() if len(kinds) == 1 else None


def _add_setting(group: Any, name: str, field: Any) -> None:
    default = field.get_default(call_default_factory=True)
    shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else default
    flag = f"--{name.replace('_', '-')}"
    help_text = (field.description or "").replace("%", "%%")
    choices = _choices(name, field.annotation)
    kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
    if field.annotation is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif choices and name != "strategies":
        kwargs |= {"choices": choices, "metavar": "{" + ",".join(choices) + "}"}
    else:
        kwargs |= {"type": _value_type(field.annotation), "metavar": name.upper()}
    if name == "strategies":
        help_text += f"; comma-separated, from: {', '.join(choices or ())}"
    group.add_argument(flag, help=f"{help_text} (default: {shown})".strip(), **kwargs)
    if name == "runs_dir":
        add_deprecated_aliases(group, name, flag)


def train_parser() -> argparse.ArgumentParser:
    """One typed flag per `TrainConfig` field, grouped, so the CLI, deployments and tests share
    one schema; plus the flags for what this command prints."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.train",
        description="Train one Keras model per balancing strategy on imbalanced tabular data and "
        "report which strategy and threshold to ship.",
        epilog=TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--config", help="YAML or JSON file of settings (flags override it)")
    fields = TrainConfig.model_fields
    placed = [name for names in FLAG_GROUPS.values() for name in names]
    if sorted(placed) != sorted(fields):
        raise RuntimeError(
            f"FLAG_GROUPS must place every setting once: {set(fields) ^ set(placed)}"
        )
    for title, names in FLAG_GROUPS.items():
        group = parser.add_argument_group(title)
        for name in names:
            _add_setting(group, name, fields[name])
    shown = parser.add_argument_group("what the command prints").add_mutually_exclusive_group()
    shown.add_argument("--quiet", "-q", action="store_true", help="errors and the answer only")
    shown.add_argument("--verbose", "-v", action="store_true", help="debug lines as well")
    parser.add_argument(
        "--json", action="store_true", help="print the answer as JSON (for scripts)"
    )
    return parser


@dataclass(frozen=True)
class Shown:
    """What a command line prints: its verbosity, and the answer as JSON or as a summary."""

    verbosity: Verbosity = "normal"
    json: bool = False


def parse_train_args(argv: list[str] | None) -> tuple[dict[str, Any], Shown]:
    """The flags given on the command line, not yet validated (`--config` still a path), and
    what to print. Bad flags exit 2 here (argparse)."""
    args = vars(train_parser().parse_args(argv))
    quiet, verbose, as_json = (args.pop(key) for key in ("quiet", "verbose", "json"))
    verbosity: Verbosity = "quiet" if quiet else "verbose" if verbose else "normal"
    return args, Shown(verbosity, as_json)


def build_config(args: dict[str, Any]) -> TrainConfig:
    """The settings of `--config` (if given), overridden by the flags, validated."""
    args = dict(args)
    config_file = args.pop("config", None)
    settings: dict[str, Any] = load_config_file(config_file) if config_file else {}
    return TrainConfig(**(settings | args))


def config_from_args(argv: list[str] | None) -> TrainConfig:
    return build_config(parse_train_args(argv)[0])


def report_error(exc: BaseException) -> None:
    """One line per problem on stderr, naming the flag or the cause."""
    if isinstance(exc, ValidationError):
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "config"
            print(f"error: --{field.replace('_', '-')}: {error['msg']}", file=sys.stderr)
    else:
        print(f"error: {exc}", file=sys.stderr)


def run_command(body: Callable[[], Any]) -> int:
    """Run a command's body and print its result as JSON (a body that printed its own answer
    returns None); the one exit-code mapping."""
    try:
        result = body()
    except (ValidationError, ImbalanceFlowError) as exc:
        report_error(exc)
        return 2
    except Exception:  # an internal error: show the traceback
        traceback.print_exc()
        return 1
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


def refuse_bad_training_input_early(argv: list[str]) -> None:
    """Called by `python -m flows.train` before its heavy imports: settings, the file's header and
    the output location are checked in about a second; a problem exits 2 at once."""
    from tasks.preflight import preflight_training

    try:
        preflight_training(config_from_args(argv))
    except (ValidationError, ImbalanceFlowError) as exc:
        report_error(exc)
        sys.exit(2)


def exit_now(code: int) -> None:
    """End a command-line process once its work is written: run the exit handlers (Prefect's
    log and event flushing, logging's flush, the temporary server's stop), then leave without
    the interpreter's teardown of every loaded module, which takes ~3.5 s once TensorFlow is
    loaded (measured on 2 cores) and changes nothing on disk."""
    import atexit
    import os

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
