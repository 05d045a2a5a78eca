"""The out-of-core data path: the in-memory stages' twin for data that would not fit
`--memory-budget`, with the same signatures, chosen once by the flow (`data_path`).

The same gates, split and feature-store layout as the in-memory path, computed over batches of
at most BATCH_ROWS rows, so memory is bounded by a batch plus per-row arrays of a few bytes:

- ingest: the source is read twice in batches (CSV chunks or parquet row groups). The first pass
  reads only the target and id columns for the table-wide checks (two classes, unique ids, class
  counts, the positive label); the second gates every batch for the per-row expectations and
  writes the normalised raw parquet batch by batch.
- split: the one implementation both paths share (`tasks.split`); it reads only (row, id, label,
  row hash, group).
- outliers and features: fitted on training rows incrementally (counts, means and variances
  merged batch by batch) with the fit helpers the in-memory path uses (`zscore_bounds`,
  `fit_bounds`, `impute_and_clip`, `Preprocessing`); medians, quartiles and percentiles come from
  a seeded uniform sample of SAMPLE_ROWS training rows (approximate quantiles). The seed
  article's sequential filter needs every row at once and is not computed.

Imports go one way: this package uses the in-memory modules' helpers; they never import it.
"""

from tasks.out_of_core.batches import BATCH_ROWS, SAMPLE_ROWS, reason
from tasks.out_of_core.features import build_features
from tasks.out_of_core.ingest import ingest
from tasks.out_of_core.outliers import handle_outliers
from tasks.split import split

__all__ = [
    "BATCH_ROWS",
    "SAMPLE_ROWS",
    "build_features",
    "handle_outliers",
    "ingest",
    "reason",
    "split",
]
