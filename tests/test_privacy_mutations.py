"""The privacy mutation harness itself: every mutation still applies to the code, names a
killing test that exists, and (slow, CI) every kind of injected privacy bug is caught.

``python scripts/mutate_privacy.py`` runs the whole list (~7 min on 2 busy cores); CI runs
one mutation of each kind through ``--subset`` here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from privacy_mutations import MUTATIONS, check

REPO = Path(__file__).resolve().parents[1]


def test_every_mutation_applies_and_names_an_existing_privacy_test():
    """A mutation whose text no longer occurs would silently test nothing: refuse it here
    (update its ``old`` text when the code it targets changes)."""
    assert len(MUTATIONS) >= 20 and len({m.name for m in MUTATIONS}) == len(MUTATIONS)
    for mutation in MUTATIONS:
        check(mutation)
        assert mutation.killers, mutation.name
        for killer in mutation.killers:
            path, name = killer.split("::")
            tree = ast.parse((REPO / path).read_text())
            [test] = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name]
            module_marks = [ast.unparse(node) for node in tree.body if isinstance(node, ast.Assign)
                            and any(getattr(target, "id", "") == "pytestmark" for target in node.targets)]
            marks = " ".join([*module_marks, *map(ast.unparse, test.decorator_list)])
            assert "pytest.mark.privacy" in marks, f"{killer} is outside the privacy subset"
    assert sum(m.subset for m in MUTATIONS) >= 10


@pytest.mark.slow
def test_one_mutation_of_each_kind_is_killed():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "mutate_privacy.py"), "--subset", "--no-baseline"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    subset = [m for m in MUTATIONS if m.subset]
    assert f"{len(subset)}/{len(subset)} mutations killed" in proc.stdout
