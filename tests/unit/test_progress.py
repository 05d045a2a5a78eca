"""The progress board (issue 13 item 2): what the trainers report reaches every view at once,
without a live display a long-training strategy gets a log line every LOG_SECONDS (and a short
one none), a failing view never reaches the trainer, finishing is idempotent and counts
"strategies k/n done". Writing to the Prefect API is left out here (`_publish` records its
calls); tests/flows/test_run_talks.py reads the real artifacts through a server's API."""

from __future__ import annotations

import logging

import pytest

from tasks import progress
from tasks.progress import LOG_SECONDS, Board, Line


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    return clock


@pytest.fixture
def board(monkeypatch):
    board = Board()
    board.published = []
    monkeypatch.setattr(board, "_publish", lambda line: board.published.append(line.strategy))
    return board


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def show(self, line: Line) -> None:
        self.seen.append((line.strategy, line.text()))


def test_every_view_sees_every_change_with_steps_and_the_best_score(board, clock):
    view = Recorder()
    board.add_view(view)
    board.start("ensemble", members=5, total=2000)
    clock.now += 3
    board.update("ensemble", 400, 0.91)
    board.update("ensemble", 480, 0.88)  # a worse check: the best so far stays
    assert view.seen[-1] == ("ensemble", "5 members · step 480/2000 · best 0.9100 · 3 s")
    board.update("ensemble", 200, 0.95, member=1)  # one at a time: which member
    assert view.seen[-1][1].startswith("member 2/5 · step 200/2000 · best 0.9500")
    assert board.lines["ensemble"].percent == pytest.approx(10.0)
    board.finish("ensemble", "ok")
    assert view.seen[-1][1].startswith("ok · step 200/2000")
    assert board.lines["ensemble"].percent == 100
    board.update("ensemble", 900, 0.99)  # after the end: ignored
    assert board.lines["ensemble"].step == 200


def test_without_a_display_only_long_training_gets_periodic_log_lines(board, clock, caplog):
    caplog.set_level(logging.INFO, logger="tasks.progress")
    board.start("smote", members=1, total=4000)
    for _ in range(10):  # a short strategy: quiet
        clock.now += 1
        board.update("smote", 100, 0.5)
    assert caplog.records == []
    for _ in range(40):  # 40 more seconds, an update every second
        clock.now += 1
        board.update("smote", 200, 0.6)
    lines = sorted({r.getMessage() for r in caplog.records})
    assert lines == [
        f"training smote: step 200/4000 · best 0.6000 · {seconds} s"
        for seconds in range(int(LOG_SECONDS), 51, int(LOG_SECONDS))
    ]


def test_a_failing_view_is_dropped_and_never_reaches_the_trainer(board):
    class Broken:
        def show(self, line: Line) -> None:
            raise RuntimeError("terminal gone")

    good = Recorder()
    board.add_view(Broken())
    board.add_view(good)
    board.start("baseline", members=1, total=10)
    board.update("baseline", 5, 0.7)  # no exception
    assert len(board.views) == 1 and len(good.seen) == 2


def test_finishing_is_idempotent_and_counts_the_strategies_done(board):
    from contextlib import ExitStack

    with ExitStack() as stack:
        stack.enter_context(board.publishing(["baseline", "smote", "reference"]))
        board.start("baseline", 1, 10)
        board.finish("baseline", "ok")
        board.finish("baseline", "failed")  # the flow repeats what a task reported
        board.finish("reference", "ok")  # never started (no steps): still counted
        assert board.lines["baseline"].status == "ok"
        assert (board._summary.step, board._summary.total) == (2, 3)
    assert board._publisher is None and board._summary is None
    # everything changed was written once more when the block ended
    assert {"baseline", "reference", "strategies"} <= set(board.published)
