"""The tutorials (notebooks/tutorials) run top to bottom on CPU and reproduce their checked outputs.

nbval re-executes every notebook; in `--nbval-lax` mode a cell fails if it raises, and cells whose first line is
`# NBVAL_CHECK_OUTPUT` must reproduce their committed output (after `nbval_sanitize.cfg`). So the notebooks are
committed executed, and their checked cells print only deterministic things (seeded data, scores, shapes).
"""
from __future__ import annotations

import os
import subprocess
import sys

import nbformat
import pytest

from aa_lib import runs

TUTORIALS = runs.REPO_ROOT / "notebooks" / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
SANITIZE = TUTORIALS / "nbval_sanitize.cfg"
CHECK = "# NBVAL_CHECK_OUTPUT"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_tutorial_is_committed_executed_with_checked_cells(path):
    nb = nbformat.read(str(path), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), f"{path.name}: first code cell is not `parameters`"
    params = code[0].source
    for name in ("output_dir", "profile", "seed"):
        assert f"{name} = " in params, f"{path.name}: parameters cell lacks {name}"
    unexecuted = [i for i, c in enumerate(code[1:], 1) if c.execution_count is None]
    assert not unexecuted, f"{path.name}: code cells {unexecuted} have no stored outputs (execute before committing)"
    checked = [c for c in code if c.source.startswith(CHECK)]
    assert checked, f"{path.name}: no `{CHECK}` cell, so nbval would compare nothing"
    empty = [c.source.splitlines()[1] for c in checked if not c.outputs]
    assert not empty, f"{path.name}: checked cells with no output to compare: {empty}"
    errors = [o.get("ename") for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: committed with errors {errors}"
    # Committed outputs are read by others: nothing of the machine they were executed on (a checkout, a venv).
    outputs = nbformat.writes(nbformat.v4.new_notebook(cells=code))
    leaks = [p for p in (str(runs.REPO_ROOT), "site-packages", "/root/", "/home/") if p in outputs]
    assert not leaks, f"{path.name}: committed outputs show machine paths {leaks}"


def test_tutorials_pass_nbval():
    assert len(NOTEBOOKS) >= 4, f"expected the four tutorials in {TUTORIALS}, found {[p.name for p in NOTEBOOKS]}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
           "--nbval-sanitize-with", str(SANITIZE), str(TUTORIALS)]
    proc = subprocess.run(cmd, cwd=runs.REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800)
    tail = (proc.stdout[-6000:] + "\n" + proc.stderr[-2000:]).strip()
    assert proc.returncode == 0, f"nbval failed:\n{tail}"
    assert " passed" in proc.stdout and "failed" not in proc.stdout, tail
