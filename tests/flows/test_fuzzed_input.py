"""Property: a valid CSV mutated the ways real files go wrong (deleted cells, text in numeric
columns, huge numbers, inf, odd encodings, a BOM, CRLF line ends, stray quotes, ragged rows)
either goes through ingestion, the raw gate and prediction with finite scores, or is refused
with one of the project's errors and a message - never an unexpected exception."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.errors import ImbalanceFlowError
from tasks.ingest import ingest
from tasks.predict import predict_file
from tasks.storage import location
from tests.conftest import SYNTHETIC, fast_config

LINES = SYNTHETIC.read_text().splitlines()
HEADER, ROWS = LINES[0], LINES[1:]
COLUMNS = HEADER.split(",")

mutation = st.one_of(
    st.tuples(
        st.just("blank cell"), st.integers(0, len(ROWS) - 1), st.integers(0, len(COLUMNS) - 1)
    ),
    st.tuples(st.just("text"), st.integers(0, len(ROWS) - 1), st.integers(1, 5)),
    st.tuples(st.just("huge"), st.integers(0, len(ROWS) - 1), st.integers(1, 4)),
    st.tuples(st.just("inf"), st.integers(0, len(ROWS) - 1), st.integers(1, 4)),
    st.tuples(st.just("stray quote"), st.integers(0, len(ROWS) - 1), st.just(0)),
    st.tuples(st.just("extra field"), st.integers(0, len(ROWS) - 1), st.just(0)),
    st.tuples(st.just("missing field"), st.integers(0, len(ROWS) - 1), st.just(0)),
)
encoding = st.sampled_from(["utf-8", "utf-8-sig", "latin-1-accent", "utf-16"])
line_end = st.sampled_from(["\n", "\r\n"])


def mutated(mutations, encoding_name: str, newline: str) -> bytes:
    rows = [row.split(",") for row in ROWS]
    for kind, row, column in mutations:
        cells = rows[row]
        if kind == "blank cell":
            cells[column] = ""
        elif kind == "text":
            cells[column] = "n/a?"
        elif kind == "huge":
            cells[column] = "1e300"
        elif kind == "inf":
            cells[column] = "inf"
        elif kind == "stray quote":
            cells[-2] = '"' + cells[-2]
        elif kind == "extra field":
            cells.append("surplus")
        else:
            cells.pop()
    text = newline.join([HEADER, *(",".join(cells) for cells in rows)]) + newline
    if encoding_name == "latin-1-accent":
        return text.replace("gold", "g\xf6ld").encode("latin-1")
    return text.encode(encoding_name)


@pytest.fixture
def model(tiny_model):
    return location(tiny_model)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    mutations=st.lists(mutation, min_size=1, max_size=6), encoding_name=encoding, newline=line_end
)
def test_mutated_files_succeed_with_finite_scores_or_are_refused_clearly(
    model, tmp_path_factory, mutations, encoding_name, newline
):
    directory = tmp_path_factory.mktemp("fuzz")
    data = directory / "data.csv"
    data.write_bytes(mutated(mutations, encoding_name, newline))
    work = directory / "work"
    work.mkdir()
    config = fast_config(directory / "runs", data=str(data))
    try:
        ingested = ingest.fn(config, work)
    except ImbalanceFlowError as exc:
        assert str(exc).strip()
    else:
        assert ingested.n_rows > 0
    out = location(directory / "scored.parquet")
    try:
        result = predict_file.fn(model, str(data), out, None, None, "skip", "score")
    except ImbalanceFlowError as exc:
        assert str(exc).strip() and not out.exists()
    else:
        scored = pd.read_parquet(out)
        assert len(scored) == result["rows"] and np.isfinite(scored["probability"]).all()
