"""Summarise a sweep folder: table (markdown + CSV), accuracy-vs-epsilon plot, ROC overlay.

    python scripts/summarize.py multirun/2026-11-28/12-00-00 [--out DIR] [--wandb-group NAME]

Reads every run's ``results.json`` under the folder. Also reports the composed epsilon of
all runs on each data set: releasing several runs, or picking the best, composes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dpgd.report import aggregate, composed_privacy, find_runs, markdown_table, plot_accuracy, plot_roc_overlay, write_csv
from dpgd.results import to_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a multirun folder (or any folder holding results.json files)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the folder)")
    parser.add_argument("--wandb-group", default=None, help="also upload the plot to this W&B group (uses WANDB_MODE)")
    args = parser.parse_args(argv)

    runs = find_runs(args.folder)
    if not runs:
        print(f"summarize: no results.json under {args.folder}; is it a dpgd output folder?", file=sys.stderr)
        return 2
    out = args.out or args.folder
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(runs)
    table = markdown_table(rows)
    composed = composed_privacy(runs)
    lines = [table, "", "Composed privacy of all runs (releasing or choosing among them):", ""]
    for dataset, info in composed.items():
        if "note" in info:
            lines.append(f"- {dataset}: {info['runs']} runs, epsilon = {info['epsilon']:.4g} ({info['note']})")
            continue
        lines.append(f"- {dataset}: {info['runs']} runs, {info['releases']} distinct releases composed as "
                     f"independent, epsilon = {info['epsilon']:.4g} at delta = {info['delta']:.1e}")
    report = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(report)
    write_csv(rows, out / "summary.csv")
    (out / "summary_privacy.json").write_text(to_json(composed) + "\n")
    plot_accuracy(rows, out / "accuracy_vs_epsilon.png")
    has_roc = plot_roc_overlay(runs, out / "mia_roc.png")
    print(report)
    print(f"wrote summary.md, summary.csv, accuracy_vs_epsilon.png{', mia_roc.png' if has_roc else ''} to {out}")
    if args.wandb_group:
        import wandb

        run = wandb.init(project="dpgd", group=args.wandb_group, job_type="summary", dir=str(out))
        try:
            run.log({"sweep/accuracy_vs_epsilon": wandb.Image(str(out / "accuracy_vs_epsilon.png"))})
        finally:
            run.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
