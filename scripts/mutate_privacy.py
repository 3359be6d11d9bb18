"""Run the privacy tests against each deliberate privacy bug of tests/privacy_mutations.py.

For every mutation: ``pytest -m privacy`` in a process forked from this one (which has
imported torch and dpgd once) with the bug applied (``DPGD_PRIVACY_MUTATION``), first on
the tests named as its killers, then, if they all pass, on the whole privacy subset. A
mutation is killed when a test fails; it survives when the whole subset passes. Prints
one row per mutation (the killing test and its message, seconds) and exits 1 if any
mutation survives or no longer applies. The unmutated subset runs first and must pass.

    python scripts/mutate_privacy.py            # every mutation (~10 min on 2 busy cores)
    python scripts/mutate_privacy.py --subset   # one per kind of bug (CI, ~3 min)
    python scripts/mutate_privacy.py --list
    python scripts/mutate_privacy.py --only "counts: noise x0.5"
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from privacy_mutations import ENV, MUTATIONS, Mutation, check  # noqa: E402


@dataclass
class Outcome:
    mutation: str
    status: str  # killed | SURVIVED | ERROR
    test: str
    message: str
    seconds: float


def first_failure(report: Path) -> tuple[str, str] | None:
    """(test id, first line of its message) of the first failed or errored test in a JUnit report."""
    if not report.is_file():
        return None
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        for kind in ("failure", "error"):
            found = case.find(kind)
            if found is not None:
                module = case.get("classname", "").replace(".", "/")
                message = (found.get("message") or found.text or "").strip().splitlines()
                return f"{module}.py::{case.get('name')}", message[0][:120] if message else ""
    return None


def preload() -> None:
    """Import what every test process needs once; each run forks from here (~10 s saved per run).

    Nothing is computed before the fork (no torch thread pool exists to be inherited), and
    the test modules are not imported here: each forked run imports them after its mutation
    is applied, as a fresh ``pytest`` process would.
    """
    import pytest  # noqa: F401
    import wandb  # noqa: F401

    from privacy_mutations import _all_dpgd_modules

    _all_dpgd_modules()


def pytest_run(mutation: str | None, targets: list[str], timeout: float) -> tuple[int, tuple[str, str] | None, str]:
    """Exit status, first failure and output tail of ``pytest -m privacy -x targets`` in a
    forked process with ``mutation`` applied (by tests/conftest.py)."""
    with tempfile.TemporaryDirectory() as folder:
        report, output = Path(folder) / "report.xml", Path(folder) / "output.txt"
        pid = os.fork()
        if pid == 0:  # the child: one pytest run, then exit without returning
            code = 3
            try:
                descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(descriptor, 1)
                os.dup2(descriptor, 2)
                os.environ.pop(ENV, None)
                os.environ.setdefault("WANDB_MODE", "offline")
                if mutation is not None:
                    os.environ[ENV] = mutation
                os.chdir(REPO)
                import pytest

                code = int(pytest.main(["-q", "-x", "-m", "privacy", "-p", "no:cacheprovider",
                                        f"--junitxml={report}", *targets]))
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return -1, None, f"timed out after {timeout:g} s"
            time.sleep(0.1)
        return code, first_failure(report), output.read_text(errors="replace")[-2000:]


def run_mutation(mutation: Mutation, timeout: float) -> Outcome:
    started = time.perf_counter()

    def outcome(status: str, test: str = "", message: str = "") -> Outcome:
        return Outcome(mutation.name, status, test, message, time.perf_counter() - started)

    try:
        check(mutation)
    except (LookupError, ValueError) as err:
        return outcome("ERROR", "", f"does not apply: {err}")
    for targets in ([*mutation.killers], []) if mutation.killers else ([],):
        code, failure, tail = pytest_run(mutation.name, targets, timeout)
        if code == 1 and failure is not None:
            return outcome("killed", *failure)
        if code not in (0, 5):  # 5: no test selected (a killer outside the privacy subset)
            return outcome("ERROR", "", f"pytest exit status {code}: {tail.strip().splitlines()[-1:]}")
    return outcome("SURVIVED")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset", action="store_true", help="only the mutations marked for CI (one per kind)")
    parser.add_argument("--only", action="append", default=[], help="a mutation's name (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the unmutated run of the privacy subset (which must pass)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest process")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if (not args.subset or m.subset) and (not args.only or m.name in args.only)]
    unknown = set(args.only) - {m.name for m in MUTATIONS}
    if unknown:
        parser.error(f"unknown mutation(s): {sorted(unknown)}")
    if args.list:
        for m in chosen:
            print(f"{m.name}\n    {m.module}: " + "; ".join(f"{old!r} -> {new!r}" for old, new in m.edits))
        return 0
    started = time.perf_counter()
    preload()
    if not args.no_baseline:
        code, failure, tail = pytest_run(None, [], args.timeout)
        print(f"baseline (no mutation): pytest -m privacy exit {code} in {time.perf_counter() - started:.0f} s",
              flush=True)
        if code != 0:
            print(f"the privacy subset fails without a mutation ({failure}); fix that first\n{tail}")
            return 1
    width = max(len(m.name) for m in chosen)
    print(f"{'mutation':<{width}}  {'result':<8}  {'seconds':>7}  killed by (first failing test: message)", flush=True)
    outcomes = []
    for mutation in chosen:
        result = run_mutation(mutation, args.timeout)
        outcomes.append(result)
        detail = f"{result.test}: {result.message}" if result.test else result.message
        print(f"{result.mutation:<{width}}  {result.status:<8}  {result.seconds:7.1f}  {detail}", flush=True)
    bad = [o for o in outcomes if o.status != "killed"]
    print(f"{len(outcomes) - len(bad)}/{len(outcomes)} mutations killed in {time.perf_counter() - started:.0f} s"
          + (f"; NOT killed: {', '.join(o.mutation for o in bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
