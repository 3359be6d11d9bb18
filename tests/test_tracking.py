"""W&B tracking (offline, for real), sweeps on the joblib and submitit launchers, sweep reports."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import dpgd.train as train
from wandb_records import run_contents

TINY = ["experiment=ndpdc", "matcher.iterations=10", "evaluation.epochs=10", "evaluation.runs=1"]
REPO = Path(__file__).resolve().parents[1]


def offline_runs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("offline-run-*"))


def test_offline_wandb_run_holds_summary_ledger_and_config(tmp_path, compose):
    cfg = compose("logger=wandb", "epsilon=2", *TINY)
    result = train.run(cfg, tmp_path, run_name="epsilon=2", run_group="sweep-a")
    [run_dir] = offline_runs(tmp_path)
    contents = run_contents(run_dir)
    summary = contents["summary"]
    assert summary["eval/test_acc_mean"] == pytest.approx(result.results["test_acc_mean"])
    assert summary["eval/test_acc_std"] == pytest.approx(result.results["test_acc_std"])
    assert summary["privacy/epsilon"] == pytest.approx(result.results["privacy"]["epsilon"])
    assert summary["privacy/epsilon_rdp"] >= summary["privacy/epsilon"] - 0.1
    assert contents["run"] == {"name": "epsilon=2", "group": "sweep-a", "job_type": "distill"}
    assert contents["config"]["epsilon"] == 2.0 and contents["config"]["matcher"]["name"] == "dp_feature"
    # Per-stage step axes: matching iterations, not call counts.
    match_rows = [row for row in contents["history"] if "match/loss" in row]
    assert [row["match/step"] for row in match_rows] == list(range(10))
    # The ledger table, as wandb wrote it.
    [table] = list(run_dir.rglob("ledger_*.table.json"))
    data = json.loads(table.read_text())
    assert data["columns"][:4] == ["component", "noise_multiplier", "sample_rate", "steps"]
    assert [row[0] for row in data["data"]] == ["counts", "matcher"] and data["data"][1][3] == 10
    # Images are of the synthetic set only: init and distilled.
    logged = {p.parent.name for p in run_dir.rglob("media/images/*/*.png")}
    assert logged == {"init", "distilled"}
    # The release, and nothing of private/, is the run's artifact.
    releases = {name: files for name, files in contents["artifacts"].items() if not name.endswith(":run_table")}
    assert releases == {"release-digits:release": [
        "distilled.png", "distilled.pt", "privacy_ledger.json", "results.json"]}


def test_wandb_run_is_named_grouped_tagged_and_has_every_stage_curve(tmp_path, compose):
    """DP-GenG (tiny) in a sweep: the name says the method and the swept values, every stage
    has a step curve (generator fit, expert steps, evaluation epochs, matching iterations)."""
    # reproducible_noise: the same release every run, so the evaluation's 10-epoch loss curve
    # (whose fall is checked below) does not depend on a secret noise draw.
    cfg = compose("logger=wandb", "epsilon=2", "debug=tiny", "expert.finetune=head", "logger.tags=[mine]",
                  "generator.cache=false", "pool_nets.cache=false", "reproducible_noise=true")
    result = train.run(cfg, tmp_path, run_group="2026-11-29/12-00-00",
                       swept={"epsilon": "2", "expert.finetune": "head", "seed": "0"})
    [run_dir] = offline_runs(tmp_path)
    contents = run_contents(run_dir)
    assert contents["run"]["name"] == "dpgeng eps=2 ipc=10 seed=0 expert.finetune=head"
    assert contents["run"]["group"] == "2026-11-29/12-00-00"
    assert contents["tags"] == ["dpgeng", "digits", "ipc=10", "mine"]
    history = contents["history"]

    def curve(key: str, step_key: str) -> list[tuple[int, float]]:
        return [(row[step_key], row[key]) for row in history if key in row]

    fit = curve("generate/fit_loss", "generate/step")
    assert [step for step, _ in fit] == [0, 9]  # every 50 steps and the last (dp_merf.steps=10)
    expert = curve("expert/test_acc", "expert/step")
    assert [step for step, _ in expert] == [1, 2, 3, 4, 5]  # 5 steps: every step (~10 points), the last by the stage
    assert all(0 <= acc <= 100 for _, acc in expert)
    assert expert[-1][1] == pytest.approx(result.results["stages"]["expert"]["test_acc"])
    loss = curve("eval/train_loss_model0", "eval/step")
    assert [step for step, _ in loss] == list(range(10)) and loss[-1][1] < loss[0][1]
    assert len(curve("match/loss", "match/step")) == 10


@pytest.mark.slow
def test_two_runs_in_one_process_make_two_wandb_runs(tmp_path, compose):
    for epsilon in ("1", "5"):
        train.run(compose("logger=wandb", f"epsilon={epsilon}", *TINY), tmp_path / epsilon, run_name=f"epsilon={epsilon}")
    runs = offline_runs(tmp_path)
    assert len(runs) == 2
    names = sorted(run_contents(r)["run"]["name"] for r in runs)
    assert names == ["epsilon=1", "epsilon=5"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_two_point_sweep_then_summary(tmp_path, launcher):
    dpgd = Path(sys.executable).with_name("dpgd")
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    proc = subprocess.run(
        [str(dpgd), "-m", f"hydra/launcher={launcher}", *extra, "epsilon=1,10", "logger=none", *TINY,
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "sweep").rglob("results.json"))) == 2
    # Numbered job folders; each job knows the sweep's swept key and its own value.
    jobs = {json.loads((tmp_path / "sweep" / str(n) / "job.json").read_text())["swept"]["epsilon"] for n in (0, 1)}
    assert jobs == {"1", "10"}
    report = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "summarize.py"), str(tmp_path / "sweep")],
        capture_output=True, text=True, timeout=300,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "summary.csv")))
    assert sorted(float(r["epsilon_target"]) for r in rows) == [1.0, 10.0]
    assert (tmp_path / "sweep" / "accuracy_vs_epsilon.png").stat().st_size > 1000
    composed = json.loads((tmp_path / "sweep" / "summary_privacy.json").read_text())["digits"]
    spent = sorted(json.loads(p.read_text())["privacy"]["epsilon"] for p in (tmp_path / "sweep").rglob("results.json"))
    # Releasing both runs costs more than the larger one alone, and less than the sum.
    assert spent[1] < composed["epsilon"] < spent[0] + spent[1]


def test_a_run_stopped_by_bad_input_after_the_data_check_leaves_no_wandb_run(tmp_path, compose):
    """delta=1e-3 is >= 1/N for digits' ~1,400 records: refused after the count release,
    when W&B has started; the offline run is deleted so `wandb sync` never uploads it."""
    from dpgd.errors import ConfigError

    with pytest.raises(ConfigError, match="delta=0.001 is not below 1/N"):
        train.run(compose("logger=wandb", "delta=1e-3", *TINY), tmp_path)
    assert offline_runs(tmp_path) == []


@pytest.mark.privacy
def test_composed_privacy_of_a_sweep_with_a_non_private_run_is_infinite(tmp_path):
    from dpgd.report import RunRecord, composed_privacy
    from reference_accountants import dp_accounting_pld

    private = {"dataset": "digits", "delta": 1e-5, "privacy": {"epsilon": 1.0, "mechanisms": [
        {"component": "matcher", "noise_multiplier": 5.0, "sample_rate": 0.1, "steps": 200, "sensitivity": "C"}]}}
    public = {"dataset": "digits", "delta": 1e-5, "privacy": {"epsilon": math.inf, "mechanisms": []}}
    only_private = composed_privacy([RunRecord(tmp_path / "a", private), RunRecord(tmp_path / "b", private)])
    assert only_private["digits"]["runs"] == 2 and only_private["digits"]["releases"] == 2
    # Two independent releases: dp-accounting's epsilon of both records (1.56), not of one (1.10).
    [record] = private["privacy"]["mechanisms"]
    assert only_private["digits"]["epsilon"] == pytest.approx(dp_accounting_pld([record, record], 1e-5), rel=1e-3)
    assert dp_accounting_pld([record], 1e-5) < 1.2
    mixed = composed_privacy([RunRecord(tmp_path / "a", private), RunRecord(tmp_path / "c", public)])
    assert mixed["digits"]["epsilon"] == math.inf


@pytest.mark.parametrize(
    ("overrides", "label"),
    [
        ((), "dpgeng"),
        (("experiment=ndpdc",), "ndpdc"),
        (("experiment=dm",), "dm"),  # non-private by definition: no suffix
        (("epsilon=inf",), "dpgeng (non-private)"),
        (("epsilon=inf", "matcher=dm"), "dp_merf+kmeans+dm+expert (non-private)"),  # a README line
        (("experiment=ndpdc", "init=kmeans", "generator=dp_merf"), "dp_merf+kmeans+dp_feature"),
        (("method=my_variant", "matcher=none"), "my_variant"),  # free text is the user's
    ],
)
def test_method_label_comes_from_what_runs(compose, overrides, label):
    from dpgd.config import typed
    from dpgd.validation import method_label

    assert method_label(typed(compose(*overrides))) == label
