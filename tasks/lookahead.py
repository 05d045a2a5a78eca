"""What a run will need, guessed cheaply before it starts.

The training command line preloads TensorFlow (~4 s of a core) while Prefect's server starts
(tasks.preload). A run on unchanged data needs none of it: every branch is kept (tasks.reuse),
its standalone model is kept (tasks.export) and its champion is its own model, so nothing is
trained, built or scored. This module guesses that from the store and the registry without
verifying any hash (the run verifies what it restores). A wrong guess costs the import later,
never a result."""

from __future__ import annotations

import logging
from pathlib import Path

from upath import UPath

from tasks.calibration import Calibration
from tasks.config import TrainConfig
from tasks.export import MODEL_FILE, model_identity, model_members
from tasks.features import MANIFEST as FEATURE_MANIFEST
from tasks.features import PREPROCESSING, fingerprint
from tasks.registry import read_registry
from tasks.reuse import MANIFEST, MODEL, RECORD, branch_key, kept_branch
from tasks.storage import location, read_json, sha256_of
from tasks.strategies import REFERENCE, resolve_strategies

log = logging.getLogger(__name__)

MAX_BYTES = 256 * 2**20  # a larger file is not hashed twice (here, then by the run) for a guess


def trains_nothing(config: TrainConfig, out_of_core: bool) -> bool:
    """Whether a run of `config` (taking the out-of-core path or not: flows.train.data_path)
    will likely need no TensorFlow: its data is a local file
    (at most MAX_BYTES) whose feature set is in the store with every requested branch kept,
    and the registry's champion is none, the gradient-boosting reference, or the model the
    run will export (the same identity). False for --retrain and repeats."""
    path = Path(config.data).expanduser()
    if config.retrain or config.repeats != 1 or not path.is_file():
        return False
    try:
        if path.stat().st_size > MAX_BYTES:
            return False
        address = fingerprint(config, sha256_of(path), out_of_core)
        features = config.store_dir / address
        if not (features / FEATURE_MANIFEST).is_file():
            return False
        names = [*resolve_strategies(config.strategies), REFERENCE]
        kept = {n: kept_branch(config.store_dir, address, branch_key(n, 0, config)) for n in names}
        if not all((directory / MANIFEST).is_file() for directory in kept.values()):
            return False
        return _champion_needs_no_scoring(config, features, kept)
    except Exception:  # noqa: BLE001 - a guess: the run itself reports any real problem
        log.debug("could not guess whether the run trains anything", exc_info=True)
        return False


def _champion_needs_no_scoring(
    config: TrainConfig, features: UPath, kept: dict[str, UPath]
) -> bool:
    champion = (read_registry(config.registry_dir, config.resolved_model_name()) or {}).get(
        "champion"
    )
    if champion is None:
        return True
    meta = read_json(location(champion["model_dir"]) / MODEL_FILE)
    if meta.get("kind") == "gradient_boosting":
        return True
    branch = kept.get(meta.get("strategy"))
    if branch is None:
        return False
    members = model_members(branch / MODEL)
    calibration = Calibration.model_validate(read_json(branch / RECORD)["calibration"])
    return meta.get("identity") == model_identity(features / PREPROCESSING, members, calibration)
