"""What the three command lines share: the training flags, the early checks and the one exit-code
mapping (the temporary Prefect server is flows.server).

Exit codes: 0 success; 2 bad input, bad settings or a failed gate (one line naming the cause);
1 an internal error (its traceback). This module imports no Prefect, TensorFlow or scikit-learn at
load time, so `python -m flows.train` can refuse a bad file before those heavy imports.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from tasks.config import TrainConfig, load_config_file
from tasks.errors import ImbalanceFlowError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

TRAIN_EXAMPLES = """\
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


def train_parser() -> argparse.ArgumentParser:
    """One flag per `TrainConfig` field, so the CLI, deployments and tests share one schema."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.train",
        description="Train one Keras model per balancing strategy on imbalanced tabular data and "
        "report which strategy and threshold to ship.",
        epilog=TRAIN_EXAMPLES,
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
    args = vars(train_parser().parse_args(argv))
    config_file = args.pop("config", None)
    settings: dict[str, Any] = load_config_file(config_file) if config_file else {}
    settings.update(args)
    return TrainConfig(**settings)


def report_error(exc: BaseException) -> None:
    """One line per problem on stderr, naming the flag or the cause."""
    if isinstance(exc, ValidationError):
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "config"
            print(f"error: --{field.replace('_', '-')}: {error['msg']}", file=sys.stderr)
    else:
        print(f"error: {exc}", file=sys.stderr)


def run_command(body: Callable[[], Any]) -> int:
    """Run a command's body and print its result as JSON; the one exit-code mapping."""
    try:
        result = body()
    except (ValidationError, ImbalanceFlowError) as exc:
        report_error(exc)
        return 2
    except Exception:  # an internal error: show the traceback
        traceback.print_exc()
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


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
