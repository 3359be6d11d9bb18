"""Reports over many runs: tables, accuracy-vs-epsilon plots, and the sweep's composed privacy.

Used by ``scripts/summarize.py`` (a multirun folder) and ``scripts/compare_methods.py``.
Each run is DP on its own; releasing several runs on the same data, or choosing the best
of them, composes. :func:`composed_privacy` composes every ledger of a data set with the
same accountant as a single run, so users see the cost of picking the best.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from dpgd.privacy import PrivacyLedger
from dpgd.privacy.ledger import split_record
from dpgd.results import (
    DIAGNOSTICS_FILE, DISTILLED_FILE, JOB_FILE, LEDGER_FILE, MIA_FILE, RELEASE_DIR, RESULTS_FILE, load_distilled, private_dir, read_json, read_results,
    release_dir,
)


@dataclass(frozen=True)
class RunRecord:
    folder: Path
    results: dict[str, Any]

    @property
    def method(self) -> str:
        return str(self.results.get("method", "custom"))

    @property
    def epsilon(self) -> float:
        return float(self.results["epsilon_target"])

    @property
    def swept(self) -> dict[str, str]:
        """The keys the run's sweep varied, with this run's values (its ``job.json``; {} for a
        single run or one made by a script)."""
        path = self.run_dir / JOB_FILE
        return dict(read_json(path).get("swept") or {}) if path.is_file() else {}

    @property
    def run_dir(self) -> Path:
        return self.folder.parent if self.folder.name == RELEASE_DIR else self.folder

    @property
    def mia(self) -> dict[str, Any] | None:
        """The attack's results from the run's ``private/mia.json`` (never in the release)."""
        path = private_dir(self.run_dir) / MIA_FILE
        if path.is_file():
            return read_json(path)
        inline = self.results.get("mia")  # a results.json that holds the attack itself (no private/)
        return inline if isinstance(inline, dict) else None


@dataclass(frozen=True)
class Row:
    """One table row: the runs of one setting, i.e. equal in everything but the seed."""

    dataset: str
    method: str
    epsilon_target: float
    ipc: int
    runs: int
    acc_mean: float
    # The sample std over seeds (runs > 1), else over the single run's evaluation models.
    acc_std: float
    epsilon_spent: float
    delta: float = 1e-5
    # Other keys the sweep varied (not seed, epsilon, ipc, method, dataset), sorted.
    setting: tuple[tuple[str, str], ...] = ()

    @property
    def std_over(self) -> str:
        return "seeds" if self.runs > 1 else "eval models"

    @property
    def setting_label(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.setting)


# Swept keys that a row already shows (or averages over: the seed).
ROW_KEYS = {"seed", "epsilon", "ipc", "method", "dataset"}


# Data set names the comparison scripts accept: Hydra overrides for each. cifar10-mini is
# the configs' cifar10_mini preset pinned to the shared slice beside this checkout.
_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS: dict[str, list[str]] = {
    "digits": ["dataset=digits"],
    "cifar10-mini": ["dataset=cifar10_mini", f"dataset.root={_SHARED / 'cifar10-mini'}"],
    # The users' scale (4,000 records a class; the mini's test split): benchmarks only.
    "cifar10-40k": ["dataset=imagefolder", f"dataset.root={_SHARED / 'cifar10-40k'}"],
}


def dataset_overrides(name: str) -> list[str]:
    """Overrides for a known data set name, else an image folder at ``name``."""
    return DATASETS.get(name, ["dataset=imagefolder", f"dataset.root={name}"])


def run_or_reuse(overrides: list[str], folder: Path) -> tuple[dict[str, Any], float, bool]:
    """Compose the packaged config with ``overrides`` and run it into ``folder``, unless the
    folder already holds a run of exactly that resolved config: (results, seconds, reused).
    For a reused run, seconds is the sum of its recorded stage timings (private diagnostics)."""
    from dpgd.config import compose, plain, typed
    from dpgd.checkpoints import discard_other_config
    from dpgd.train import run  # the pipeline's imports, only when a run is needed

    cfg = typed(compose(*overrides))
    results = finished_results(folder, plain(cfg))
    if results is not None:
        return results, sum(read_diagnostics(folder).get("timings_s", {}).values()), True
    discard_other_config(folder, plain(cfg))  # a changed setting reruns; the same one resumes
    started = time.perf_counter()
    results = run(cfg, folder).results
    return results, time.perf_counter() - started, False


def find_runs(folder: Path) -> list[RunRecord]:
    """Every finished run (a ``results.json``) under ``folder``, in a stable order.

    A record's ``folder`` is the folder holding its ``results.json`` (the run's ``release/``).
    """
    return [RunRecord(path.parent, read_results(path)) for path in sorted(Path(folder).rglob(RESULTS_FILE))]


def finished_results(folder: Path, resolved_config: dict[str, Any]) -> dict[str, Any] | None:
    """The results of a finished run in ``folder`` made with exactly ``resolved_config``, else None.

    Lets the comparison scripts resume: a run is reused only if its released set was made
    with the same resolved config, so changing a setting or a config default reruns it (a
    code change that leaves the config alone does not: clear the folder then).
    """
    folder = release_dir(Path(folder))
    if not (folder / RESULTS_FILE).exists() or not (folder / DISTILLED_FILE).exists():
        return None
    if load_distilled(folder).config != resolved_config:
        return None
    return read_results(folder)


def read_diagnostics(run_dir: Path) -> dict[str, Any]:
    """A run's private ``diagnostics.json`` (timings, memory), or {} when absent."""
    path = private_dir(Path(run_dir)) / DIAGNOSTICS_FILE
    return read_json(path) if path.is_file() else {}


def aggregate(runs: Iterable[RunRecord]) -> list[Row]:
    """One row per setting: (data set, method, epsilon, ipc, delta, every other swept key),
    with the mean and sample std over seeds of the run means.

    A key the sweep varied (``expert.finetune=all,head``) separates rows, never averages. The
    sample (n-1) std, so a margin "larger than the std" over 3 seeds is not flattered; a
    single run's std is the std over its own evaluation models (``Row.std_over`` says which).
    """
    groups: dict[tuple[Any, ...], list[RunRecord]] = {}
    for run in runs:
        setting = tuple(sorted((k, v) for k, v in run.swept.items() if k not in ROW_KEYS))
        key = (str(run.results["dataset"]), run.method, run.epsilon, int(run.results["ipc"]),
               float(run.results.get("delta", 1e-5)), setting)
        groups.setdefault(key, []).append(run)
    rows = []
    for (dataset, method, epsilon, ipc, delta, setting), members in sorted(groups.items(), key=lambda kv: kv[0]):
        means = [float(m.results["test_acc_mean"]) for m in members]
        std = statistics.stdev(means) if len(means) > 1 else float(members[0].results.get("test_acc_std", 0.0))
        spent = max(float(m.results["privacy"]["epsilon"]) for m in members)
        rows.append(Row(dataset, method, epsilon, ipc, len(members), statistics.fmean(means), std, spent, delta, setting))
    return rows


def _fmt_eps(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.4g}"


def markdown_table(rows: list[Row]) -> str:
    with_setting = any(r.setting for r in rows)
    lines = [
        "| data set | method |" + (" setting |" if with_setting else "")
        + " epsilon target | IPC | runs | test acc % (mean +- std) | std over | epsilon spent |",
        "|---|---|" + ("---|" if with_setting else "") + "---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.dataset} | {r.method} |" + (f" {r.setting_label} |" if with_setting else "")
            + f" {_fmt_eps(r.epsilon_target)} | {r.ipc} | {r.runs} "
            f"| {r.acc_mean:.2f} +- {r.acc_std:.2f} | {r.std_over} | {_fmt_eps(r.epsilon_spent)} |"
        )
    return "\n".join(lines) + "\n"


def write_csv(rows: list[Row], path: Path) -> None:
    """The table as CSV: accuracies to 2 decimals (as in the table), epsilons to 4 digits."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "method", "setting", "epsilon_target", "ipc", "delta", "runs", "acc_mean",
                         "acc_std", "std_over", "epsilon_spent"])
        for r in rows:
            writer.writerow([r.dataset, r.method, r.setting_label, _fmt_eps(r.epsilon_target), r.ipc, f"{r.delta:g}",
                             r.runs, f"{r.acc_mean:.2f}", f"{r.acc_std:.2f}", r.std_over, _fmt_eps(r.epsilon_spent)])


def plot_accuracy(rows: list[Row], path: Path) -> tuple[str, list[str]]:
    """Test accuracy against epsilon (log scale, ticks at the swept epsilons): one line per
    setting (method, and the data set, IPC and other swept keys where they vary), error bars
    = std over seeds with n in the legend (a single seed has none, and says so).

    Non-private rows (epsilon=inf) are drawn as dashed horizontal reference lines. Returns
    the title and the legend's labels (what a reader sees without the README).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    series: dict[tuple[Any, ...], list[Row]] = {}
    for r in rows:
        series.setdefault((r.dataset, r.method, r.ipc, r.setting), []).append(r)
    varies = {name: len({getattr(r, name) for r in rows}) > 1 for name in ("dataset", "ipc")}
    finite = sorted({r.epsilon_target for r in rows if math.isfinite(r.epsilon_target)})
    for (dataset, method, ipc, setting), members in series.items():
        parts = [method] + ([dataset] if varies["dataset"] else []) + ([f"IPC {ipc}"] if varies["ipc"] else [])
        parts += [f"{key}={value}" for key, value in setting]
        seeds = sorted({r.runs for r in members})
        n_label = "1 seed, no error bar" if seeds == [1] else f"n={'/'.join(map(str, seeds))} seeds"
        label = f"{', '.join(parts)} ({n_label})"
        points = sorted((r for r in members if math.isfinite(r.epsilon_target)), key=lambda r: r.epsilon_target)
        if points:
            ax.errorbar([p.epsilon_target for p in points], [p.acc_mean for p in points],
                        yerr=[p.acc_std if p.runs > 1 else 0.0 for p in points], marker="o", capsize=3, label=label)
        for r in members:
            if math.isinf(r.epsilon_target):
                ax.axhline(r.acc_mean, linestyle="--", linewidth=1, color="grey", label=f"{label}, non-private")
    if finite:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(finite))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{e:g}" for e in finite])
    datasets = ", ".join(sorted({r.dataset for r in rows}))
    ipcs = "/".join(str(i) for i in sorted({r.ipc for r in rows}))
    deltas = "/".join(f"{d:g}" for d in sorted({r.delta for r in rows}))
    title = f"{datasets}: test accuracy vs privacy budget (IPC {ipcs}, delta {deltas})"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epsilon (target of each run)")
    ax.set_ylabel("test accuracy (%): mean, bars = std over seeds")
    ax.grid(True, which="major", alpha=0.3)
    legend = ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return title, [text.get_text() for text in legend.get_texts()]


def plot_roc_overlay(runs: list[RunRecord], path: Path) -> bool:
    """Overlay the MIA ROC curves of the runs' ``private/mia.json``; False if none has one.

    The plot is the data owner's (attack results are not DP): keep it out of a release.
    """
    curves = [(run, run.mia) for run in runs if run.mia is not None and run.mia.get("roc")]
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    floor = 1e-4
    for run, mia in curves:
        fpr = [max(x, floor) for x in mia["roc"]["fpr"]]
        tpr = [max(y, floor) for y in mia["roc"]["tpr"]]
        ax.plot(fpr, tpr, label=f"{run.method} eps={_fmt_eps(run.epsilon)} (AUC {mia['auc']:.2f})")
    ax.plot([floor, 1], [floor, 1], "k--", linewidth=1, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def composed_privacy(runs: list[RunRecord]) -> dict[str, dict[str, Any]]:
    """Per data set: the epsilon of releasing (or choosing among) all its runs together.

    Reads each run's ``privacy_ledger.json`` (falling back to ``results.json["privacy"]``).
    Every record carries the id of the release whose noise it drew: a record reused by
    several runs (a cached pool) is one release and is counted once; the rest are
    independent releases (each run draws its own secret noise) and are composed by the
    ledger's accountant at the smallest delta used. A non-private run, or one whose noise
    came from the public seed (``reproducible_noise=true``: not DP, and sweeps of such runs
    share noise), makes the composition infinite.
    """
    by_dataset: dict[str, list[RunRecord]] = {}
    for run in runs:
        by_dataset.setdefault(str(run.results["dataset"]), []).append(run)
    out = {}
    for dataset, members in by_dataset.items():
        seen: set[tuple[str, str]] = set()
        ledger = PrivacyLedger()
        notes = []
        deltas = []
        duplicates = 0
        for run in members:
            ledger_path = run.folder / LEDGER_FILE
            privacy = read_results(ledger_path) if ledger_path.exists() else run.results["privacy"]
            deltas.append(float(run.results["delta"]))
            if not math.isfinite(float(privacy["epsilon"])):
                notes.append("includes non-private runs")
                continue
            if privacy.get("dp") is False:
                notes.append("includes runs with reproducible (public-seed) noise: not DP")
                continue
            for record in privacy["mechanisms"]:
                mechanism, release_id = split_record(record)
                # Older files carry no release id: each run's records are then their own release.
                release_id = release_id or f"run:{run.folder}"
                identity = (release_id, json.dumps(mechanism.to_dict(), sort_keys=True))
                if identity in seen:
                    duplicates += 1
                    continue
                seen.add(identity)
                ledger.declare(mechanism, release_id)
        # The accountant composes the mechanisms themselves, so the joint release is
        # (epsilon, delta)-DP at any delta we ask for; we ask at the runs' own delta.
        delta = min(deltas)
        releases = len({release for release, _ in seen})
        if notes:
            out[dataset] = {"runs": len(members), "epsilon": math.inf, "delta": delta,
                            "note": "; ".join(sorted(set(notes)))}
            continue
        report = ledger.report(delta)
        out[dataset] = {"runs": len(members), "releases": releases, "shared_records_counted_once": duplicates,
                        "epsilon": report.epsilon, "epsilon_rdp": report.epsilon_rdp,
                        "delta": report.delta, "accountant": report.accountant,
                        "composition": "distinct releases once; independent releases composed by the accountant"}
    return out
