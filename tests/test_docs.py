"""The documentation stays true: README.md and docs/ checked against the code (fast, offline).

* every ``dpgd ...`` command (in a code block or an inline code span) composes with the
  packaged configs and passes the static checks a run makes before reading data; a sweep
  (``-m``) composes each value of each swept key;
* every ``group=option`` the pages name exists as ``configs/<group>/<option>.yaml``, and the
  README's presets table lists every preset in ``configs/experiment/``;
* every relative link (and its ``#anchor``) resolves;
* every measured table is what ``scripts/render_results.py`` renders from ``docs/results/``;
* the README stays a front door (at most 250 lines, with the set-up commands CI runs), and
  no project file narrates its development history.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path
from unittest import mock

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from dpgd.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
CONFIGS = REPO / "configs"
GROUPS = {p.name for p in CONFIGS.iterdir() if p.is_dir() and any(p.glob("*.yaml"))}
# Pages written alongside these (the audit's measured power, the public-data route): a link
# to one of them is checked once the page exists.
PAGES_ALONGSIDE = {DOCS / "privacy-audit.md", DOCS / "public-knowledge.md"}

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
SEPARATORS = {"&&", "||", ";", "|", "&"}


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def render_results():
    spec = importlib.util.spec_from_file_location("render_results", REPO / "scripts" / "render_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the commands ---------------------------------------------------------------------------

def shell_commands(text: str) -> list[list[str]]:
    """The simple commands of a shell snippet (continuations joined, comments dropped)."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:  # not shell (an unbalanced quote in a table of output)
            continue
        current: list[str] = []
        for token in [*tokens, ";"]:
            if token in SEPARATORS:
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
    return commands


def dpgd_commands(text: str) -> list[str]:
    """Every ``dpgd`` invocation of a page: in code blocks and in inline code spans."""
    found = []
    for block in FENCE.findall(text):
        for tokens in shell_commands(block):
            while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):  # VAR=value prefixes
                tokens = tokens[1:]
            if tokens and tokens[0] == "dpgd":
                found.append(shlex.join(tokens))
    prose = FENCE.sub("", text)
    for span in INLINE.findall(prose):
        if span == "dpgd" or span.startswith("dpgd "):
            found.extend(shlex.join(t) for t in shell_commands(span) if t and t[0] == "dpgd")
    return found


def compositions(command: str) -> list[list[str]]:
    """The override lists a command composes: one, or for a sweep (-m) each value of each
    swept key once (the other swept keys at their first value)."""
    args = shlex.split(command)[1:]
    multirun = False
    overrides = []
    flags_with_value = {"--cfg", "-c", "--info", "--package", "-p", "--config-name", "-cn", "--config-dir", "-cd"}
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("-m", "--multirun"):
            multirun = True
        elif arg in flags_with_value:
            skip = True
        elif arg.startswith("-"):
            continue  # --help, --hydra-help, --resolve
        else:
            overrides.append(arg)
    parsed = OverridesParser.create().parse_overrides(overrides)
    sweeps = {i: [str(v) for v in o.sweep_string_iterator()] for i, o in enumerate(parsed) if o.is_sweep_override()}
    if sweeps and not multirun:
        raise AssertionError(f"`{command}` sweeps {', '.join(overrides[i] for i in sweeps)} without -m")
    base = [o if i not in sweeps else f"{parsed[i].get_key_element()}={sweeps[i][0]}"
            for i, o in enumerate(overrides)]
    combos = [base]
    for i, values in sweeps.items():
        for value in values[1:]:
            combos.append([*base[:i], f"{parsed[i].get_key_element()}={value}", *base[i + 1:]])
    return combos


def all_commands() -> list[tuple[str, str]]:
    return [(page.relative_to(REPO).as_posix(), command) for page in pages()
            for command in dict.fromkeys(dpgd_commands(page.read_text(encoding="utf-8")))]


def check_command(command: str) -> None:
    """Compose ``command`` as ``dpgd`` would and run the checks a run makes before it reads
    data, except those that look for files and devices (a page may name ``/path/to/tree``,
    ``public.root=/data/imagenet32`` or ``device=cuda``)."""
    from dpgd import validation
    from dpgd.config import compose, typed

    with mock.patch.object(validation, "check_source_settings"), mock.patch.object(validation, "resolve_device"), \
            mock.patch.object(validation, "check_public_files"):
        for overrides in compositions(command):
            validation.check_config(typed(compose(*overrides)))


def test_the_pages_hold_commands():
    commands = [c for _, c in all_commands()]
    assert "dpgd" in commands and any(" -m " in c for c in commands) and len(commands) > 20


@pytest.mark.parametrize("page, command", all_commands(), ids=lambda x: x if "/" in x or x.endswith(".md") else x[:80])
def test_every_dpgd_command_composes(page, command):
    check_command(command)


def test_a_broken_command_fails_the_check():
    """The check is not vacuous: a mistyped key, an unknown option, a sweep without -m and a
    combination the run refuses before reading data fail."""
    for broken in ("dpgd matcher.lr_image=0.4", "dpgd experiment=nosuch", "dpgd epsilon=1,10",
                   "dpgd matcher=dm epsilon=1"):
        with pytest.raises((ConfigError, HydraException, AssertionError)):
            check_command(broken)


def test_the_command_reader_finds_chained_swept_and_inline_commands():
    text = ("```bash\npip install -e . && dpgd   # run\nHYDRA_FULL_ERROR=1 dpgd -m epsilon=1,10 \\\n"
            "    seed=0,1\npython scripts/summarize.py x\n```\nand inline `dpgd debug=tiny` but not `dpgd.config`.\n")
    assert dpgd_commands(text) == ["dpgd", "dpgd -m epsilon=1,10 seed=0,1", "dpgd debug=tiny"]
    assert compositions("dpgd -m epsilon=1,10 seed=0,1") == [["epsilon=1", "seed=0"], ["epsilon=10", "seed=0"],
                                                             ["epsilon=1", "seed=1"]]


# --- config options and presets ---------------------------------------------------------------

def named_options(text: str) -> set[tuple[str, str]]:
    """``group=option`` pairs in code (``dpgd experiment=ndpdc``, ``init=kmeans``), sweeps split."""
    found = set()
    code = " ".join(FENCE.findall(text) + INLINE.findall(FENCE.sub("", text)))
    for group, options in re.findall(r"(?<![\w./+-])([a-z_]+(?:/[a-z_]+)?)=([\w,]+)", code):
        if group in GROUPS:
            found.update((group, option) for option in options.split(",") if option != "null")
    return found


def test_every_named_config_option_exists():
    missing = [(page.name, f"{g}={o}") for page in pages() for g, o in named_options(page.read_text(encoding="utf-8"))
               if not (CONFIGS / g / f"{o}.yaml").is_file()]
    assert not missing, f"options that configs/ does not hold: {missing}"


def presets_table() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Presets", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def test_the_presets_table_names_existing_options_and_every_preset():
    rows = presets_table()
    assert rows and all(len(r) == len(rows[0]) for r in rows)
    named = set()
    for row in rows:
        names = re.findall(r"`([\w]+)`", row[0])
        named.update(names)
        for name in names:
            assert (CONFIGS / "experiment" / f"{name}.yaml").is_file(), f"presets table: no preset {name}"
        for group, option in named_options(" | ".join(row)):
            assert (CONFIGS / group / f"{option}.yaml").is_file(), f"presets table, {row[0]}: no {group}={option}"
    presets = {p.stem for p in (CONFIGS / "experiment").glob("*.yaml")}
    assert presets <= named, f"presets missing from the README's table: {sorted(presets - named)}"


# --- links --------------------------------------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.*)$", text, re.M)}


def test_every_relative_link_resolves():
    broken = []
    for page in pages():
        text = FENCE.sub("", page.read_text(encoding="utf-8"))
        for target in LINK.findall(re.sub(r"`[^`\n]*`", "", text)):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                if resolved not in PAGES_ALONGSIDE:
                    broken.append(f"{page.name}: {target}")
                continue
            if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_the_slug_follows_github():
    assert slug("Methods on digits (3 seeds)") == "methods-on-digits-3-seeds"
    assert slug("The `auto` rule: expert fine-tuning") == "the-auto-rule-expert-fine-tuning"


# --- generated tables -----------------------------------------------------------------------------

def test_the_measured_tables_are_what_the_script_renders():
    module = render_results()
    stale = [p.relative_to(REPO).as_posix() for p in module.render_pages(check=True)]
    assert not stale, f"out of date: {stale}; run python scripts/render_results.py"


def test_every_results_file_is_shown_somewhere():
    module = render_results()
    shown = {name for page in pages() for name in module.blocks(page.read_text(encoding="utf-8"))}
    data = {p.stem for p in (DOCS / "results").glob("*.yaml")}
    assert data == shown, f"data without a block: {sorted(data - shown)}; blocks without data: {sorted(shown - data)}"


def test_imported_comparison_cells_render_in_the_headline(tmp_path, monkeypatch):
    """compare_methods.py's JSON -> headline cells -> the README grid (no training: a made-up
    comparison)."""
    module = render_results()
    data_dir = tmp_path / "results"
    data_dir.mkdir()
    (data_dir / "headline.yaml").write_text((DOCS / "results" / "headline.yaml").read_text(encoding="utf-8"))
    monkeypatch.setattr(module, "DATA", data_dir)
    comparison = {"dataset": "digits", "overrides": [], "rows": [
        {"method": "ndpdc", "epsilon_target": 1.0, "runs": 3, "acc_mean": 77.123, "acc_std": 1.5, "setting": []},
        {"method": "dm", "epsilon_target": float("inf"), "runs": 2, "acc_mean": 96.0, "acc_std": 0.25, "setting": []},
        {"method": "dpgeng_no_expert", "epsilon_target": 1.0, "runs": 3, "acc_mean": 1.0, "acc_std": 0.0},
    ]}
    path = tmp_path / "comparison.json"
    path.write_text(json.dumps(comparison))
    assert module.import_comparison(path, commit="abc1234", machine="test machine", date="2030-01-01") == 2
    body = module.render("headline")
    assert "77.12 +- 1.50 (3)" in body and "commit `abc1234`, 2030-01-01, test machine" in body
    ndpdc = next(line for line in body.splitlines() if "ndpdc" in line)
    dm = next(line for line in body.splitlines() if "experiment=dm" in line)
    assert dm.count("96.00 +- 0.25 (2)") == 2  # epsilon=inf: both epsilon columns of digits
    assert ndpdc.split("|")[2].strip().startswith("77.12")


# --- the README as a front door, and no history ---------------------------------------------------

def test_the_readme_is_short_and_holds_what_ci_runs():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci == 'pip install -e ".[test]" && pytest'
    assert ci in text and "pip install -e . && dpgd" in text


# Spelled in pieces so that this file passes its own check.
HISTORY = re.compile("sess" "ion|iss" "ue [0-9#]", re.I)


def test_no_file_narrates_development_history():
    files = [README, *DOCS.rglob("*.md"), *DOCS.rglob("*.yaml")]
    for folder in ("configs", "dpgd", "tests", "scripts"):
        files += [p for p in (REPO / folder).rglob("*") if p.suffix in (".py", ".yaml", ".md") and p.is_file()]
    hits = [f"{p.relative_to(REPO)}:{n}" for p in files
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if HISTORY.search(line)]
    assert not hits, hits
