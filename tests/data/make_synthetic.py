"""Regenerate tests/data/synthetic.csv: a small imbalanced table with one text categorical column.

    python tests/data/make_synthetic.py

400 rows, ~15% positives ("yes"), four continuous columns, a 0/1 flag, a text categorical
`segment` (three levels, related to the label) and an `account_id` column."""

from pathlib import Path

import numpy as np
import pandas as pd


def make(n: int = 400, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.15
    segment = np.where(
        y,
        rng.choice(["gold", "silver", "bronze"], n, p=[0.6, 0.3, 0.1]),
        rng.choice(["gold", "silver", "bronze"], n, p=[0.2, 0.4, 0.4]),
    )
    frame = pd.DataFrame(
        {
            "account_id": np.arange(1000, 1000 + n),
            "amount": np.round(rng.lognormal(3 + 0.8 * y, 0.6), 2),
            "age": np.round(rng.normal(45 - 6 * y, 10), 1),
            "score_a": np.round(rng.normal(1.2 * y, 1.0), 4),
            "score_b": np.round(rng.normal(-0.8 * y, 1.0), 4),
            "has_card": (rng.random(n) < 0.3 + 0.3 * y).astype(int),
            "segment": segment,
            "churned": np.where(y, "yes", "no"),
        }
    )
    return frame


if __name__ == "__main__":
    make().to_csv(Path(__file__).with_name("synthetic.csv"), index=False)
