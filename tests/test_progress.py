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
