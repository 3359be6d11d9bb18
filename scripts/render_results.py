"""Render the measured tables of the docs from their data in ``docs/results/``.

    python scripts/render_results.py                       # rewrite every generated block
    python scripts/render_results.py --check               # exit 1 if a block is out of date
    python scripts/render_results.py --import outputs/compare/comparison.json
    python scripts/render_results.py --measure-headline    # run the headline comparison, import it, render

Every measured table lives as data, one YAML file per table (``docs/results/<name>.yaml``:
the command, the commit it ran on, the machine, the date, the columns and rows, notes).
README.md and the pages in docs/ hold a block per table between ``<!-- results:<name> -->``
and ``<!-- /results:<name> -->``; this script replaces each block by the table rendered
from its data, so the numbers are written in one place and never edited in the Markdown.
``tests/test_docs.py`` fails when a block differs from what this script renders.

A cell written ``null`` renders as "—" (not measured at the table's settings), ``""`` as an
empty cell (does not apply); a new measurement goes into the YAML file's ``rows`` and the
page is re-rendered.

The headline table (``headline.yaml``: methods x data sets x epsilons) is filled from the
JSON that ``scripts/compare_methods.py`` writes: ``--import`` reads one such file and stores
each (data set, method, epsilon) cell with the current commit, machine and date;
``--measure-headline`` runs that comparison for every data set of the headline first
(resumable, like compare_methods.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "docs" / "results"
PAGES = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
MISSING = "—"
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


def load(name: str) -> dict[str, Any]:
    """One table's data. Scalars stay strings (``21.70`` keeps its digits) except in the
    headline's cells, which are numbers written by ``--import``."""
    path = DATA / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"render_results: {path.relative_to(REPO)} is missing (named by a results block)")
    with path.open(encoding="utf-8") as handle:
        return yaml.load(handle, Loader=yaml.BaseLoader)


def _missing(value: Any) -> bool:
    return value is None or value in ("null", "~", "")


def _cell(value: Any) -> str:
    """A table cell: ``null`` is a measurement still to make ("—"), ``""`` a cell that does
    not apply (left empty)."""
    if value == "":
        return ""
    return MISSING if _missing(value) else str(value).replace("|", "\\|")


def _meta(data: dict[str, Any]) -> list[str]:
    lines = []
    commands = data.get("command")
    if commands:
        lines += ["```bash", *str(commands).strip().splitlines(), "```", ""]
    facts = [f"commit `{data['commit']}`" if data.get("commit") else None, data.get("date"), data.get("machine"),
             data.get("protocol")]
    facts = [str(f) for f in facts if f]
    if facts:
        lines += ["Measured: " + "; ".join(facts) + ".", ""]
    return lines


def render_table(data: dict[str, Any]) -> list[str]:
    columns = data["columns"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in data["rows"]:
        if len(row) != len(columns):
            raise SystemExit(f"render_results: row {row} has {len(row)} cells for {len(columns)} columns")
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return lines


def _eps_label(value: str) -> str:
    return "inf" if float(value) == math.inf else f"{float(value):g}"


def render_headline(data: dict[str, Any]) -> list[str]:
    """The grid: one row per method, one column per (data set, epsilon); a method run at
    epsilon=inf shows its one value in every epsilon column of its data set."""
    datasets, epsilons = data["datasets"], data["epsilons"]
    cells = {(c["dataset"], c["method"], _eps_label(c["epsilon"])): c for c in data.get("cells") or []}
    notes: list[str] = []
    header = ["method"] + [f"{d}, eps {_eps_label(e)}" for d in datasets for e in epsilons]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in data["methods"]:
        row = [method["label"]]
        for dataset in datasets:
            for epsilon in epsilons:
                key = (dataset, method["key"], "inf" if method.get("epsilon") == "inf" else _eps_label(epsilon))
                cell = cells.get(key)
                if cell is None:
                    row.append(MISSING)
                    continue
                source = f"commit `{cell['commit']}`, {cell['date']}, {cell['machine']}"
                if cell.get("note"):
                    source += f"; {cell['note']}"
                if source not in notes:
                    notes.append(source)
                mark = notes.index(source) + 1
                seeds = int(cell["seeds"])
                value = f"{float(cell['mean']):.2f}" + (f" +- {float(cell['std']):.2f}" if seeds > 1 else "")
                row.append(f"{value} ({seeds}) [{mark}]")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", str(data["legend"]).strip(), ""]
    lines += [f"- [{number}] {source}." for number, source in enumerate(notes, start=1)]
    return lines


def render(name: str) -> str:
    """The body of the block ``name`` (without its marker lines)."""
    data = load(name)
    lines = [f"<!-- generated by scripts/render_results.py from docs/results/{name}.yaml: edit the data, "
             "not this block -->", ""]
    if data.get("kind") == "headline":
        lines += _meta(data) + render_headline(data)
    else:
        lines += _meta(data) + render_table(data)
    if data.get("notes"):
        lines += ["", str(data["notes"]).strip()]
    return "\n".join(lines) + "\n"


def rendered(text: str) -> str:
    """``text`` with every results block replaced by its rendering."""
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("name")) + m.group(4), text)


def blocks(text: str) -> list[str]:
    return [m.group("name") for m in BLOCK.finditer(text)]


def render_pages(check: bool = False) -> list[Path]:
    """Rewrite (or, with ``check``, only compare) every page; returns the pages that differ."""
    stale = []
    for page in PAGES:
        if not page.is_file():
            continue
        text = page.read_text(encoding="utf-8")
        new = rendered(text)
        if new != text:
            stale.append(page)
            if not check:
                page.write_text(new, encoding="utf-8")
    return stale


# --- filling the headline from compare_methods.py's JSON ----------------------------------

HEADLINE = "headline"
HEADLINE_ARGS = ["--epsilons", "1", "10", "--ipc", "10", "--seeds", "0", "1", "2",
                 "--methods", "dpgeng", "ndpdc", "generator_only", "dm"]


def current_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "dpgd", "configs"],
                               cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def current_machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{os.cpu_count()}-core CPU"


def headline_cells(comparison: dict[str, Any], *, commit: str, machine: str, date: str) -> list[dict[str, Any]]:
    """The headline cells a comparison.json holds (its rows, one per method and epsilon)."""
    cells = []
    for row in comparison["rows"]:
        if row.get("setting"):
            continue  # a swept setting is not the method's default
        cells.append({"dataset": str(comparison["dataset"]), "method": str(row["method"]),
                      "epsilon": _eps_label(row["epsilon_target"]), "mean": round(float(row["acc_mean"]), 2),
                      "std": round(float(row["acc_std"]), 2), "seeds": int(row["runs"]), "commit": commit,
                      "date": date, "machine": machine})
    return cells


def import_comparison(path: Path, *, commit: str, machine: str, date: str) -> int:
    """Store the cells of ``path`` in headline.yaml (replacing those of the same data set,
    method and epsilon); returns how many were stored. Only the headline's own data sets,
    methods and epsilons are kept, and only runs with the comparison's default overrides."""
    comparison = json.loads(path.read_text(encoding="utf-8"))
    if comparison.get("overrides"):
        raise SystemExit(f"render_results: {path} ran with --set {comparison['overrides']}; the headline holds "
                         "the defaults only")
    file = DATA / f"{HEADLINE}.yaml"
    data = yaml.safe_load(file.read_text(encoding="utf-8"))
    methods = {m["key"] for m in data["methods"]}
    wanted = {_eps_label(e) for e in data["epsilons"]} | {"inf"}
    new = [c for c in headline_cells(comparison, commit=commit, machine=machine, date=date)
           if c["dataset"] in data["datasets"] and c["method"] in methods and c["epsilon"] in wanted]
    keys = {(c["dataset"], c["method"], c["epsilon"]) for c in new}
    old = [c for c in data.get("cells") or [] if (c["dataset"], c["method"], _eps_label(c["epsilon"])) not in keys]
    data["cells"] = old + new
    file.write_text(dump_headline(data), encoding="utf-8")
    return len(new)


def dump_headline(data: dict[str, Any]) -> str:
    head = ("# The headline table (README.md). Cells are written by scripts/render_results.py --import /\n"
            "# --measure-headline from scripts/compare_methods.py's JSON; a missing cell renders as '—'.\n")
    cells = data.pop("cells", None) or []
    body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    lines = ["cells:"] + [f"  - {json.dumps(c, ensure_ascii=False)}" for c in cells] if cells else ["cells: []"]
    data["cells"] = cells
    return head + body + "\n".join(lines) + "\n"


def measure_headline(out: Path) -> list[Path]:
    data = yaml.safe_load((DATA / f"{HEADLINE}.yaml").read_text(encoding="utf-8"))
    files = []
    for dataset in data["datasets"]:
        folder = out / dataset
        command = [sys.executable, str(REPO / "scripts" / "compare_methods.py"), "--dataset", dataset,
                   *HEADLINE_ARGS, "--out", str(folder)]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True)
        files.append(folder / "comparison.json")
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is out of date")
    parser.add_argument("--import", dest="imports", type=Path, nargs="*", default=[],
                        help="comparison.json files of scripts/compare_methods.py to store in the headline")
    parser.add_argument("--measure-headline", action="store_true",
                        help="run scripts/compare_methods.py for the headline's data sets, then import and render")
    parser.add_argument("--out", type=Path, default=Path("outputs/headline"), help="--measure-headline's run folders")
    parser.add_argument("--commit", default=None, help="commit of the imported runs (default: git HEAD)")
    parser.add_argument("--machine", default=None, help="machine of the imported runs (default: this one)")
    parser.add_argument("--date", default=None, help="date of the imported runs (default: today)")
    args = parser.parse_args()
    imports = list(args.imports)
    if args.measure_headline:
        imports += measure_headline(args.out)
    if imports:
        stamp = {"commit": args.commit or current_commit(), "machine": args.machine or current_machine(),
                 "date": args.date or datetime.date.today().isoformat()}
        for path in imports:
            print(f"{path}: {import_comparison(path, **stamp)} headline cells")
    stale = render_pages(check=args.check)
    for page in stale:
        print(f"{page.relative_to(REPO)}: {'out of date' if args.check else 'rendered'}")
    if args.check and stale:
        sys.exit(1)


if __name__ == "__main__":
    main()
