"""Resume after a kill: an interrupted run, rerun into its folder, releases what
the uninterrupted run releases, spends no budget twice, and refuses a changed config.

The in-process tests interrupt matching by raising from the iteration callback (the state
saved so far is exactly what a kill would leave, since every write is atomic); the slow
test kills a ``dpgd`` process with SIGKILL at a random moment of matching.
"""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dpgd.pipeline as pipeline
import dpgd.train as train
from dpgd.checkpoints import KEY_FILE, checkpoint_dir
from dpgd.errors import ConfigError
from dpgd.privacy.randomness import NoiseSource

# Tiny digits DP-GenG (every stage runs) with enough iterations for several saved states.
TINY = ["debug=tiny", "logger=none", "matcher.iterations=30", "checkpoint_every=7", "generator.cache=false",
        "pool_nets.cache=false"]
REPRODUCIBLE = [*TINY, "reproducible_noise=true"]


class Interrupted(Exception):
    """Stands for the kill: raised inside matching, after some states were saved."""


@pytest.fixture
def interrupt_matching_at(monkeypatch):
    """``interrupt(k)``: the next run stops at matching iteration k; returns the iterations
    seen by each later (uninterrupted) call, to show where a resumed loop started."""
    real_match = pipeline.match
    seen: list[list[int]] = []

    def arm(stop_at: int | None) -> list[list[int]]:
        def match(*args, on_iteration=None, **kwargs):
            iterations: list[int] = []
            seen.append(iterations)

            def hook(iteration, values):
                iterations.append(iteration)
                if stop_at is not None and iteration == stop_at:
                    raise Interrupted
                if on_iteration is not None:
                    on_iteration(iteration, values)
            return real_match(*args, on_iteration=hook, **kwargs)
        monkeypatch.setattr(pipeline, "match", match)
        return seen
    return arm


def records_without_release_id(result) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "release_id"} for m in result.results["privacy"]["mechanisms"]]


def test_interrupted_matching_resumes_to_the_uninterrupted_release(compose, tmp_path, interrupt_matching_at,
                                                                     one_torch_thread):
    uninterrupted = train.run(compose(*REPRODUCIBLE), tmp_path / "whole")

    interrupt_matching_at(17)
    with pytest.raises(Interrupted):
        train.run(compose(*REPRODUCIBLE), tmp_path / "killed")
    saved = checkpoint_dir(tmp_path / "killed")
    assert (saved / "match_state.pt").is_file() and not (tmp_path / "killed" / "release").exists()
    assert torch.load(saved / "match_state.pt", weights_only=True)["iteration"] == 14  # last multiple of 7

    seen = interrupt_matching_at(None)
    resumed = train.run(compose(*REPRODUCIBLE), tmp_path / "killed")
    assert seen[-1] == list(range(14, 30)), "the resumed loop continues from the saved state"
    assert resumed.diagnostics["resumed"] is True

    assert torch.equal(resumed.distilled.images, uninterrupted.distilled.images)
    assert records_without_release_id(resumed) == records_without_release_id(uninterrupted)
    assert resumed.results["test_acc_runs"] == uninterrupted.results["test_acc_runs"]
    assert resumed.results["class_counts"] == uninterrupted.results["class_counts"]
    assert resumed.results["stages"] == uninterrupted.results["stages"]
    # One release: every record of the resumed run carries the run's one release id.
    assert {m["release_id"] for m in resumed.results["privacy"]["mechanisms"]} == {resumed.results["release_id"]}
    assert not (saved / "match_state.pt").exists(), "the mid-matching state (generator states) is deleted"


def test_interrupted_matching_keeps_the_selection_candidates_it_had_passed(compose, tmp_path, interrupt_matching_at,
                                                                          one_torch_thread):
    """Candidates at iterations 0, 8, 15, 22, 30: the kill at 25 comes after the state of 21,
    so the resumed loop starts at 21 and the candidates of 8 and 15 must come from disk."""
    overrides = [*REPRODUCIBLE, "selection.candidates=5"]
    uninterrupted = train.run(compose(*overrides), tmp_path / "whole")
    assert uninterrupted.results["stages"]["select"]["iterations"] == [0, 8, 15, 22, 30]

    interrupt_matching_at(25)
    with pytest.raises(Interrupted):
        train.run(compose(*overrides), tmp_path / "killed")
    saved = torch.load(checkpoint_dir(tmp_path / "killed") / "match_snapshots.pt", weights_only=True)
    assert saved["iterations"] == [8, 15, 22]

    seen = interrupt_matching_at(None)
    resumed = train.run(compose(*overrides), tmp_path / "killed")
    assert seen[-1][0] == 21
    assert resumed.results["stages"]["select"] == uninterrupted.results["stages"]["select"]
    assert torch.equal(resumed.distilled.images, uninterrupted.distilled.images)
    assert not (checkpoint_dir(tmp_path / "killed") / "match_snapshots.pt").exists()


def test_secret_key_lives_only_in_private_while_the_run_is_unfinished(compose, tmp_path, interrupt_matching_at):
    run_dir = tmp_path / "run"
    interrupt_matching_at(10)
    with pytest.raises(Interrupted):
        train.run(compose(*TINY), run_dir)
    key_file = checkpoint_dir(run_dir) / KEY_FILE
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes()

    interrupt_matching_at(None)
    result = train.run(compose(*TINY), run_dir)
    assert result.results["privacy"]["dp"] is True
    assert not key_file.exists(), "the key is deleted once the release is written"
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert key not in path.read_bytes(), f"{path} holds the noise key"


def test_the_key_file_gives_the_same_streams_to_every_process_of_a_run(tmp_path):
    first = NoiseSource.for_resumable_run(0, private=True, reproducible=False, key_file=tmp_path / KEY_FILE)
    again = NoiseSource.for_resumable_run(0, private=True, reproducible=False, key_file=tmp_path / KEY_FILE)
    other = NoiseSource.for_resumable_run(0, private=True, reproducible=False, key_file=tmp_path / "other.key")
    draw = lambda source: torch.randn(8, generator=source.generator("match", "noise"))  # noqa: E731
    assert first.is_secret and torch.equal(draw(first), draw(again))
    assert not torch.equal(draw(first), draw(other))
    assert first.seed_for("x") != NoiseSource.from_public_seed(0).seed_for("x")


def test_a_changed_config_in_the_same_folder_is_refused_before_any_data(compose, tmp_path, interrupt_matching_at,
                                                                       monkeypatch):
    interrupt_matching_at(5)
    with pytest.raises(Interrupted):
        train.run(compose(*REPRODUCIBLE), tmp_path)
    monkeypatch.setattr(train, "load_dataset", lambda *a, **k: pytest.fail("data read before the refusal"))
    with pytest.raises(ConfigError, match=r"another config \(epsilon: 1\.0 -> 2\.0\).*hydra\.run\.dir"):
        train.run(compose(*REPRODUCIBLE, "epsilon=2"), tmp_path)


def test_rerunning_a_finished_run_draws_nothing(compose, tmp_path, monkeypatch):
    first = train.run(compose(*REPRODUCIBLE), tmp_path)
    monkeypatch.setattr(train, "load_dataset", lambda *a, **k: pytest.fail("a finished run read the data again"))
    monkeypatch.setattr(pipeline, "distill", lambda *a, **k: pytest.fail("a finished run ran a stage again"))
    again = train.run(compose(*REPRODUCIBLE, "logger=none"), tmp_path)
    assert again.results == first.results
    assert torch.equal(again.distilled.images, first.distilled.images)
    assert not (checkpoint_dir(tmp_path) / KEY_FILE).exists()


def test_resume_false_saves_nothing(compose, tmp_path):
    train.run(compose(*REPRODUCIBLE, "resume=false"), tmp_path)
    assert not checkpoint_dir(tmp_path).exists()


def test_a_resumed_run_logs_into_the_same_wandb_run(compose, tmp_path, interrupt_matching_at):
    over = [*REPRODUCIBLE, "logger=wandb", "logger.mode=offline"]
    interrupt_matching_at(10)
    with pytest.raises(Interrupted):
        train.run(compose(*over), tmp_path)
    interrupt_matching_at(None)
    train.run(compose(*over), tmp_path)
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    assert len({path.name.rsplit("-", 1)[-1] for path in runs}) == 1, [p.name for p in runs]


# --- a real kill ----------------------------------------------------------------------

KILL_RUN = ["debug=tiny", "logger=none", "reproducible_noise=true", "matcher.iterations=400", "checkpoint_every=20",
            "generator.cache=false", "pool_nets.cache=false"]


@pytest.mark.slow
def test_sigkill_during_matching_then_rerun_equals_the_uninterrupted_run(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}

    def command(run_dir: Path) -> list[str]:
        return [sys.executable, "-m", "dpgd.train", *KILL_RUN, f"hydra.run.dir={run_dir}"]

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(command(whole), env=env, check=True, capture_output=True, timeout=600)

    process = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = checkpoint_dir(killed) / "match_state.pt"
    deadline = time.monotonic() + 300
    while not state.exists():
        assert process.poll() is None, "the run ended before matching saved a state"
        assert time.monotonic() < deadline, "no matching state saved within 5 minutes"
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.0))  # a random point of matching (after the first saved state)
    assert process.poll() is None, "the run finished before it could be killed; raise matcher.iterations"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not (killed / "release" / "results.json").exists()

    subprocess.run(command(killed), env=env, check=True, capture_output=True, timeout=600)

    def released(run_dir: Path) -> tuple[torch.Tensor, list[dict]]:
        import json

        images = torch.load(run_dir / "release" / "distilled.pt", weights_only=True)["images"]
        ledger = json.loads((run_dir / "release" / "privacy_ledger.json").read_text())
        return images, [{k: v for k, v in m.items() if k != "release_id"} for m in ledger["mechanisms"]]

    images_whole, ledger_whole = released(whole)
    images_killed, ledger_killed = released(killed)
    assert torch.equal(images_killed, images_whole)
    assert ledger_killed == ledger_whole
