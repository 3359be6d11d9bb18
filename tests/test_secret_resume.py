"""Resuming a run with secret noise: the rerun draws exactly the noise the killed process
would have drawn, so the release equals the uninterrupted run's given the same key.

The resume tests of tests/test_resume.py use reproducible (public-seed) noise; here the
noise is secret. The uninterrupted run is handed the interrupted run's key through the
key file a fresh run reads (:meth:`NoiseSource.for_resumable_run`), so both draw from
one secret source and only the interruption differs.
"""

from __future__ import annotations

import shutil

import pytest
import torch

import dpgd.pipeline as pipeline
import dpgd.train as train
from dpgd.checkpoints import KEY_FILE, checkpoint_dir

pytestmark = [pytest.mark.privacy, pytest.mark.usefixtures("one_torch_thread")]

SECRET = ["debug=tiny", "logger=none", "matcher.iterations=20", "checkpoint_every=5", "generator.cache=false",
          "pool_nets.cache=false", "expert.finetune=all", "evaluation.epochs=1", "pool_nets.epochs=1",
          "pool_nets.snapshots=1", "selection.epochs=1"]


class Interrupted(Exception):
    """Stands for the kill: raised inside matching after some states were saved."""


def test_secret_resume_equals_the_uninterrupted_run_with_the_same_key(compose, tmp_path, monkeypatch):
    real_match = pipeline.match
    stop_at: list[int | None] = [12]  # after the state saved at 10

    def match(*args, on_iteration=None, **kwargs):
        def hook(iteration, values):
            if iteration == stop_at[0]:
                raise Interrupted
            if on_iteration is not None:
                on_iteration(iteration, values)

        return real_match(*args, on_iteration=hook, **kwargs)

    monkeypatch.setattr(pipeline, "match", match)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    with pytest.raises(Interrupted):
        train.run(compose(*SECRET), killed)
    key = checkpoint_dir(killed) / KEY_FILE
    (checkpoint_dir(whole)).mkdir(parents=True)
    shutil.copy2(key, checkpoint_dir(whole) / KEY_FILE)

    stop_at[0] = None
    uninterrupted = train.run(compose(*SECRET), whole)
    resumed = train.run(compose(*SECRET), killed)
    assert resumed.diagnostics["resumed"] is True and uninterrupted.diagnostics["resumed"] is False
    for result in (resumed, uninterrupted):
        assert result.results["privacy"]["dp"] is True and "secret" in result.results["privacy"]["noise"]
    assert torch.equal(resumed.distilled.images, uninterrupted.distilled.images)
    assert resumed.results["class_counts"] == uninterrupted.results["class_counts"]
    assert resumed.results["stages"] == uninterrupted.results["stages"]

    def records(result):
        return [{k: v for k, v in m.items() if k != "release_id"} for m in result.results["privacy"]["mechanisms"]]

    assert records(resumed) == records(uninterrupted)
    assert not key.exists() and not (checkpoint_dir(whole) / KEY_FILE).exists()
