"""The installed ``dpgd`` console script, run in a subprocess as a user would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import dpgd

pytestmark = pytest.mark.slow


def dpgd_command() -> list[str]:
    script = Path(sys.executable).with_name("dpgd")
    if script.exists():
        return [str(script)]
    found = shutil.which("dpgd")
    if found is None:
        pytest.fail("the dpgd console script is not installed; run `pip install -e .`")
    return [found]


def run_cli(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        dpgd_command() + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def only_run_dir(root: Path) -> Path:
    found = [p.parent.parent for p in root.rglob("release/results.json")]
    assert len(found) == 1, found
    return found[0]


QUICK = ["matcher.iterations=20", "evaluation.epochs=30", "evaluation.runs=1"]
# The default method (DP-GenG) shortened stage by stage; the full default is timed by hand.
QUICK_DPGENG = [
    *QUICK, "generator.dp_merf.steps=100", "generator.pool_per_class=50", "pool_nets.epochs=3",
    "expert.steps=30",
]


def test_default_run_from_another_folder_writes_the_artifacts(tmp_path):
    """`dpgd` with the defaults (digits, DP matching, offline W&B), shortened, from a bare folder."""
    proc = run_cli(QUICK_DPGENG, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path / "outputs")
    results = json.loads((run_dir / "release" / "results.json").read_text())
    for key in ("dataset", "method", "ipc", "seed", "epsilon_target", "delta", "test_acc_mean",
                "test_acc_std", "test_acc_runs", "privacy", "class_counts", "release_id"):
        assert key in results, key
    diagnostics = json.loads((run_dir / "private" / "diagnostics.json").read_text())
    assert set(diagnostics) >= {"timings_s", "peak_memory_mb"}
    assert results["dataset"] == "digits" and results["ipc"] == 10
    assert 0.0 <= results["test_acc_mean"] <= 100.0
    assert 0 < results["privacy"]["epsilon"] <= 1.0
    assert results["method"] == "dpgeng"
    # expert.finetune=auto: with 30 steps (sigma ~3.4) the predicted noise-to-signal is ~19 for
    # all weights and ~3.4 for the head, so the head is fine-tuned (one expert record)
    assert results["stages"]["expert"]["finetune"] == "head"
    assert sorted(m["component"] for m in results["privacy"]["mechanisms"]) == [
        "counts", "expert", "generator", "matcher", "selection"]
    assert results["privacy"]["dp"] is True
    assert (run_dir / "release" / "distilled.png").stat().st_size > 0
    assert (run_dir / "release" / "privacy_ledger.json").exists()
    distilled = dpgd.load_distilled(run_dir)
    assert len(distilled) == 100 and distilled[0][0].shape == (1, 8, 8)
    assert list(distilled.labels.bincount()) == [10] * 10
    assert list((run_dir / "wandb").glob("offline-run-*")), "the offline W&B run is missing"


def test_imagefolder_non_private_run(tmp_path, cifar10_mini):
    proc = run_cli(
        ["dataset=cifar10_mini", "experiment=dm",
         "logger=none", "dataset.max_train_per_class=50", "matcher.batch_real=32", *QUICK],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((only_run_dir(tmp_path / "outputs") / "release" / "results.json").read_text())
    assert results["dataset"] == "imagefolder" and results["num_classes"] == 10
    assert results["privacy"]["epsilon"] == "inf"  # strict JSON: no Infinity
    assert results["method"] == "dm"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["foo=1"], "Could not override 'foo'"),  # Hydra's composition errors too
        (["dataset=nosuch"], "Available options in 'dataset': celeba, cifar10"),
        (["-m", "seed=0,1", "foo=1"], "Could not override 'foo'"),
        (["epsilon=-1"], "epsilon=-1"),
        (["ipc=abc"], "ipc=abc"),
        (["init=real"], "epsilon=inf"),
        (["delta=0.5"], "delta=0.5 is too large"),
        (["dataset=imagefolder", "dataset.root=/nonexistent/dpgd-data"], "/nonexistent/dpgd-data"),
        (["ipc=1000"], "ipc=1000"),
    ],
)
def test_bad_input_gives_one_line_and_exit_status_2(tmp_path, args, expected):
    proc = run_cli(args + ["logger=none"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dpgd: error: ") and expected in lines[0], proc.stderr
    assert "error" not in proc.stdout  # printed once: not again by the console log
    # Nothing ran: no results were written.
    assert not list(tmp_path.rglob("results.json"))


def test_a_truncated_image_is_named_in_one_line(tmp_path, cifar10_mini):
    tree = tmp_path / "data"
    for split in ("train", "test"):
        for label in ("cat", "dog"):
            shutil.copytree(next((cifar10_mini / split).iterdir()), tree / split / label,
                            ignore=lambda folder, names: sorted(names)[20:])
    broken = sorted((tree / "train" / "dog").iterdir())[3]
    broken.write_bytes(broken.read_bytes()[:100])
    proc = run_cli(["dataset=imagefolder", f"dataset.root={tree}", "ipc=2", "logger=none"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and broken.name in lines[0], proc.stderr


def test_a_sweep_with_thirty_overrides_runs_in_numbered_job_folders(tmp_path, compose):
    """Job folders are numbered: a folder named from every override outgrows the file
    system's 255 characters at 30 overrides (OSError: File name too long)."""
    cfg = compose("experiment=ndpdc")
    keys = [f"{section}.{key}" for section in ("logger", "evaluation", "matcher", "init", "expert", "pool_nets")
            for key, value in OmegaConf.to_container(cfg[section]).items()
            if isinstance(value, (int, float, str)) and not isinstance(value, bool) and key != "name"
            and f"{section}.{key}" not in {"evaluation.runs", "evaluation.epochs", "matcher.iterations"}][:30]
    overrides = [f"{key}={OmegaConf.select(cfg, key)}" for key in keys]
    assert len(overrides) == 30 and len("_".join(overrides)) > 600
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "seed=0", "matcher.iterations=3", "evaluation.epochs=2", "evaluation.runs=1",
                    "experiment=ndpdc", "logger=none", f"hydra.sweep.dir={sweep}", *overrides], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = json.loads((sweep / "0" / "job.json").read_text())
    assert len(job["overrides"]) == 36 and job["swept"] == {} and job["job_num"] == 0
    assert (sweep / "0" / "release" / "results.json").is_file()


def test_ctrl_c_stops_with_status_130_and_names_the_stage(tmp_path):
    proc = subprocess.Popen(
        dpgd_command() + ["experiment=ndpdc", "matcher.iterations=100000", "logger=none", "hydra.run.dir=run"],
        cwd=tmp_path, env={**os.environ, "HYDRA_FULL_ERROR": "0"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
        # A shell without job control starts background commands with SIGINT ignored, and an
        # ignored signal stays ignored across exec (Python then installs no KeyboardInterrupt
        # handler): give the run the disposition of a terminal's foreground job.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    log_file = tmp_path / "run" / "train.log"
    deadline = time.monotonic() + 300
    while not (log_file.is_file() and "stage match ..." in log_file.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None, "matching never started"
        time.sleep(0.5)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    assert f"dpgd: interrupted in stage match; rerun the same command with hydra.run.dir={tmp_path / 'run'}" in stderr
    log_text = log_file.read_text()
    assert "stage match interrupted after" in log_text and "stage match done" not in log_text


def test_help_names_the_command_and_hides_internal_groups(tmp_path):
    proc = run_cli(["--help"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("dpgd is powered by Hydra")
    assert "schema/" not in proc.stdout and "experiment: dm, dpgeng" in proc.stdout
