"""`--search N` in a real run: each strategy keeps the configuration its members score best with
on the validation stop half, and what it ships (members, histories, record) is that one."""

import json
from pathlib import Path

import numpy as np

from flows.train import train_flow
from tasks.embeddings import default_weight_decay
from tests.conftest import FAST, fast_config

STRATEGIES = ["baseline", "class_weight", "undersample", "ensemble"]


def test_each_strategy_keeps_the_configuration_best_on_the_stop_half(tmp_path):
    result = train_flow(fast_config(tmp_path / "runs", strategies=STRATEGIES, search=2))
    metrics = json.loads(Path(result.metrics_path).read_text())
    records = {r["strategy"]: r for r in metrics["strategies"] if r["strategy"] in STRATEGIES}
    rows = result.feature_set.manifest["splits"]["train"]["rows"]
    defaults = {
        "learning_rate": FAST["learning_rate"],
        "weight_decay": default_weight_decay(rows),
        "dropout": 0.1,
    }
    candidate_lists = []
    for name, record in records.items():
        assert record["status"] == "ok", record
        found = record["search"]
        assert len(found["candidates"]) == 3 and found["candidates"][0] == defaults
        candidate_lists.append(found["candidates"])
        scores = found["stop_log_likelihood"]
        assert found["chosen"] == int(np.argmax(scores))
        assert found["chosen_settings"] == found["candidates"][found["chosen"]]
        # the shipped members are the chosen configuration's: their early-stopping scores
        histories = json.loads(
            (Path(result.run_dir) / "branches" / name / "history.json").read_text()
        )
        kept = np.mean([max(h["val_log_likelihood"]) for h in histories])
        assert np.isclose(kept, scores[found["chosen"]], atol=1e-6)
    assert all(c == candidate_lists[0] for c in candidate_lists)  # one draw for the run
