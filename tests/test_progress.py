"""Progress output fit for log files."""

from __future__ import annotations


def test_progress_bars_redraw_rarely_when_stderr_is_a_file(monkeypatch):
    """SLURM/nohup logs: a bar off a terminal redraws every 30 s, on a terminal as tqdm likes."""
    import sys

    from dpgd.progress import FILE_INTERVAL_S, progress_bar

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    with progress_bar(range(3), disable=False) as bar:
        assert bar.mininterval == FILE_INTERVAL_S == 30.0
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with progress_bar(range(3), disable=False) as bar:
        assert bar.mininterval < 1.0


def test_the_stage_timer_says_failed_or_interrupted_not_done(caplog):
    import logging

    import pytest

    from dpgd.pipeline import StageTimer

    timer = StageTimer()
    with caplog.at_level(logging.INFO, logger="dpgd"):
        with timer.stage("ok"):
            pass
        with pytest.raises(ValueError), timer.stage("broken"):
            raise ValueError("bad")
        with pytest.raises(KeyboardInterrupt), timer.stage("match"):
            raise KeyboardInterrupt
    lines = [r.getMessage() for r in caplog.records if "after" in r.getMessage()]
    assert [line.split(" after")[0] for line in lines] == ["stage ok done", "stage broken failed",
                                                           "stage match interrupted"]
    assert set(timer.seconds) == {"ok", "broken", "match"}
