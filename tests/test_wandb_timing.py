"""What timing reaches W&B (docs/privacy-audit.md): the run's start and its end, nothing in between.

W&B stamps each history row with the wall time it is logged (``_timestamp``, ``_runtime``)
and the SDK cannot turn ``_runtime`` off, so dpgd writes every row when the run finishes.
Read from the offline run's own record file (W&B runs for real, offline).
"""

from __future__ import annotations

import pytest

import dpgd.train as train
from dpgd.results import release_dir
from wandb_records import iter_records, run_contents

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_wandb_rows_are_written_after_the_release_and_carry_steps_not_stage_times(compose, tmp_path):
    result = train.run(compose("logger=wandb", "logger.mode=offline", "debug=tiny", "generator.cache=false",
                               "pool_nets.cache=false", "expert.finetune=all"), tmp_path)
    released_at = (release_dir(tmp_path) / "results.json").stat().st_mtime
    [run_dir] = list((tmp_path / "wandb").glob("offline-run-*"))
    contents = run_contents(run_dir)
    history = contents["history"]
    stages = {key.split("/")[0] for row in history for key in row if "/" in key and not key.startswith("_")}
    assert {"generate", "expert", "match", "select", "eval", "init", "distilled"} <= stages
    # Every row, matching's included, is written after the release: its wall time is the end's.
    assert min(row["_timestamp"] for row in history) >= released_at
    runtimes = [row["_runtime"] for row in history]
    assert max(runtimes) - min(runtimes) < 0.25 * max(runtimes)
    # The curves keep their own step axes.
    match_rows = [row for row in history if "match/loss" in row]
    assert [row["match/step"] for row in match_rows] == list(range(10))
    # Summary and exit: the run's total time (and nothing per stage or iteration).
    times = {key for key in contents["summary"] if "time" in key or "runtime" in key}
    assert times <= {"_timestamp", "_runtime", "_wandb/runtime"}, times
    [log] = list(run_dir.glob("run-*.wandb"))
    [exit_record] = [r.exit for r in iter_records(log) if r.WhichOneof("record_type") == "exit"]
    assert exit_record.runtime >= max(runtimes) - 1
    assert result.results["privacy"]["dp"] is True
