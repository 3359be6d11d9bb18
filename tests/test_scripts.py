"""The comparison scripts in ``scripts/``, run as a user runs them (shortened settings)."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from dpgd.report import RunRecord, aggregate

pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
# NDPDC on digits, cut down to seconds: the scripts' bookkeeping is under test, not accuracy.
TINY = ["matcher.iterations=3", "evaluation.epochs=2", "evaluation.runs=1"]


def run_script(name: str, args: list[str], cwd: Path) -> str:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPTS / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_compare_methods_writes_the_table_and_resumes_only_identical_runs(tmp_path):
    args = ["--dataset", "digits", "--epsilons", "1", "--seeds", "0", "1", "--methods", "ndpdc",
            "--out", str(tmp_path / "cmp"), "--set", *TINY]
    first = run_script("compare_methods.py", args, tmp_path)
    assert "reused" not in first
    payload = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    (row,) = payload["rows"]
    assert row["method"] == "ndpdc" and row["runs"] == 2
    assert 0.9 < row["epsilon_spent"] <= 1.0
    accuracies = [r["test_acc_mean"] for r in payload["runs"]]
    assert row["acc_mean"] == pytest.approx(statistics.fmean(accuracies))
    assert "| digits | ndpdc | 1 | 10 | 2 |" in (tmp_path / "cmp" / "comparison.md").read_text()

    again = run_script("compare_methods.py", args, tmp_path)
    assert again.count("reused") == 2
    assert [r["test_acc_mean"] for r in json.loads((tmp_path / "cmp" / "comparison.json").read_text())["runs"]] == accuracies

    # A changed setting is a different run: it is made again, not read back.
    changed = run_script("compare_methods.py", [*args[:-len(TINY)], "matcher.iterations=4", *TINY[1:]], tmp_path)
    assert "reused" not in changed


def test_compare_schedules_reports_a_decaying_sigma(tmp_path):
    out = tmp_path / "schedules"
    run_script("compare_schedules.py", ["--kinds", "constant", "exponential", "--seeds", "0", "--out", str(out),
                                        "--set", *TINY], tmp_path)
    runs = {r["kind"]: r for r in json.loads((out / "schedules.json").read_text())}
    assert runs["constant"]["sigma_first"] == pytest.approx(runs["constant"]["sigma_last"])
    assert runs["exponential"]["sigma_first"] > runs["exponential"]["sigma_last"]
    assert all(0.98 <= r["epsilon"] <= 1.0 for r in runs.values())
    assert "| exponential |" in (out / "schedules.md").read_text()


def test_table_std_is_the_sample_std_over_seeds(tmp_path):
    def record(seed: int, accuracy: float) -> RunRecord:
        return RunRecord(tmp_path / str(seed), {"dataset": "digits", "method": "ndpdc", "epsilon_target": 1.0,
                                                "ipc": 10, "test_acc_mean": accuracy, "test_acc_std": 0.0,
                                                "privacy": {"epsilon": 0.99}})

    (row,) = aggregate([record(0, 80.0), record(1, 84.0), record(2, 82.0)])
    assert row.runs == 3 and row.acc_mean == pytest.approx(82.0)
    assert row.acc_std == pytest.approx(2.0)  # the population std would be 1.63


def fake_sweep_run(folder: Path, seed: int, epsilon: float, ipc: int, accuracy: float,
                   swept: dict[str, str]) -> None:
    """A finished job as summarize.py finds it: release/results.json and the job's job.json."""
    from dpgd.results import write_json

    write_json(folder / "release" / "results.json", {
        "dataset": "digits", "method": "dpgeng", "epsilon_target": epsilon, "ipc": ipc, "delta": 1e-5,
        "seed": seed, "test_acc_mean": accuracy, "test_acc_std": 0.5, "privacy": {"epsilon": epsilon * 0.99,
                                                                                  "mechanisms": []}})
    write_json(folder / "job.json", {"overrides": [f"{k}={v}" for k, v in swept.items()], "swept": swept})


def test_summary_keeps_swept_keys_apart_and_labels_the_plot(tmp_path):
    """`epsilon=1,10 ipc=10,50 expert.finetune=all,head seed=0,1`: one series per (ipc, finetune),
    error bars over the two seeds, ticks and title from the sweep."""
    from dpgd.report import aggregate, find_runs, plot_accuracy

    job = 0
    for epsilon in (1.0, 10.0):
        for ipc in (10, 50):
            for finetune in ("all", "head"):
                for seed in (0, 1):
                    accuracy = 50 + epsilon + ipc / 10 + (5 if finetune == "head" else 0) + 2 * seed
                    fake_sweep_run(tmp_path / str(job), seed, epsilon, ipc, accuracy, {
                        "epsilon": f"{epsilon:g}", "ipc": str(ipc), "expert.finetune": finetune, "seed": str(seed)})
                    job += 1
    rows = aggregate(find_runs(tmp_path))
    assert len(rows) == 8 and all(r.runs == 2 for r in rows)  # the seed is averaged, nothing else
    head = [r for r in rows if r.setting == (("expert.finetune", "head"),) and r.ipc == 50 and r.epsilon_target == 10]
    assert len(head) == 1 and head[0].acc_mean == pytest.approx(50 + 10 + 5 + 5 + 1)
    assert head[0].acc_std == pytest.approx(2 ** 0.5) and head[0].std_over == "seeds"
    title, labels = plot_accuracy(rows, tmp_path / "plot.png")
    assert "digits" in title and "IPC 10/50" in title and "delta 1e-05" in title
    assert sorted(labels) == sorted(f"dpgeng, IPC {ipc}, expert.finetune={f} (n=2 seeds)"
                                    for ipc in (10, 50) for f in ("all", "head"))


def test_summarize_script_writes_a_row_per_setting(tmp_path):
    for job, (ipc, seed) in enumerate([(10, 0), (50, 0)]):
        fake_sweep_run(tmp_path / str(job), seed, 1.0, ipc, 60.0 + ipc / 10, {"ipc": str(ipc)})
    run_script("summarize.py", [str(tmp_path)], tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [(r["ipc"], r["acc_mean"], r["std_over"]) for r in rows] == [("10", "61.00", "eval models"),
                                                                         ("50", "65.00", "eval models")]
    assert json.loads((tmp_path / "summary_privacy.json").read_text(),
                      parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))["digits"]["runs"] == 2
