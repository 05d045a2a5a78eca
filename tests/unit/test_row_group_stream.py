"""Training batches streamed from a stored split a few parquet row groups at a time."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.model import RowGroupStream
from tasks.storage import location
from tasks.train import StoreRows

ROWS, GROUP = 200, 25  # 8 row groups


class CountingStore(StoreRows):
    """The real store reader, counting the row groups it reads."""

    reads = 0

    def inputs(self, group: int) -> np.ndarray:
        CountingStore.reads += 1
        return super().inputs(group)


@pytest.fixture
def store(tmp_path):
    """A split whose numeric feature is the row number; category code = row % 3."""
    frame = pd.DataFrame({"n": np.arange(ROWS, dtype=np.float32), "c": np.arange(ROWS) % 3})
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=GROUP)
    CountingStore.reads = 0
    return CountingStore(location(str(path)), ["n"], ["c"])


def labels(positives: int) -> np.ndarray:
    y = np.zeros(ROWS, dtype=np.int64)
    y[np.random.default_rng(5).choice(ROWS, positives, replace=False)] = 1
    return y


def rows_in(batches) -> list[int]:
    return [int(v) for x, _ in batches for v in x[:, 0]]


def test_inputs_are_numerics_then_category_codes(store):
    x = store.inputs(1)
    assert x.shape == (GROUP, 2) and x[:, 0].tolist() == list(range(25, 50))
    assert x[:, 1].tolist() == (np.arange(25, 50) % 3).tolist()
    gathered = store.gather(np.array([3, 27, 199]))
    assert gathered[:, 0].tolist() == [3, 27, 199]


def test_every_row_once_per_pass_reading_each_group_once(store):
    y = labels(30)
    batches = list(itertools.islice(RowGroupStream(store, y, 20, seed=1, balanced=False)(), 20))
    first, second = rows_in(batches[:10]), rows_in(batches[10:])
    assert sorted(first) == sorted(second) == list(range(ROWS))
    assert first != second  # a new order every pass
    assert CountingStore.reads == 16  # 8 groups per pass, never the whole split at once
    for x, batch_y in batches:
        assert len(x) == 20 and (batch_y == y[x[:, 0].astype(int)]).all()  # labels travel along


def test_rows_are_shuffled_across_the_groups_of_a_window(store):
    batch = next(RowGroupStream(store, labels(30), 40, seed=2, balanced=False, window=2)())
    groups = Counter(int(v) // GROUP for v in batch[0][:, 0])
    assert len(groups) == 2  # one batch mixes two row groups, in no particular order
    assert batch[0][:, 0].tolist() != sorted(batch[0][:, 0].tolist())


def test_a_pool_with_repeats_is_drawn_with_its_multiplicities(store):
    y = labels(30)
    pool = np.concatenate([np.arange(ROWS), np.flatnonzero(y)])  # oversampled positives
    stream = RowGroupStream(store, y, 23, seed=3, balanced=False, rows=pool)
    drawn = rows_in(itertools.islice(stream(), len(pool) // 23))  # 230 rows: one pass
    assert Counter(drawn) == Counter(pool.tolist())


def test_balanced_batches_are_half_positives_with_negatives_streamed(store):
    y = labels(12)
    batches = list(itertools.islice(RowGroupStream(store, y, 16, seed=4, balanced=True)(), 47))
    for x, batch_y in batches:
        assert batch_y.sum() == 8 and (batch_y == y[x[:, 0].astype(int)]).all()
    negatives = [r for r in rows_in(batches) if y[r] == 0]
    assert sorted(negatives[:188]) == sorted(np.flatnonzero(y == 0).tolist())  # one pass


def test_streams_are_seeded(store):
    def first(seed: int) -> list[int]:
        return rows_in(itertools.islice(RowGroupStream(store, labels(30), 20, seed, True)(), 3))

    assert first(7) == first(7) and first(7) != first(8)
