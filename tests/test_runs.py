"""The batch runner executes real notebooks with papermill: outputs, skipping, failure isolation, resuming."""
import json

import nbformat
import pytest
import yaml

from aa_lib import runs


def _notebook(path, body):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("seed = 0\nfail_on = -1\noutput_dir = '.'\nprofile = 'tiny'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


BODY = """
from aa_lib.runs import save_results
if seed == fail_on:
    raise RuntimeError(f"seed {seed} is set to fail")
save_results(output_dir, {"value": seed * 10, "profile": profile})
"""


@pytest.fixture
def root(tmp_path, monkeypatch):
    nb = tmp_path / "nb.ipynb"
    _notebook(nb, BODY)
    monkeypatch.setattr(runs, "REPO_ROOT", tmp_path)
    (tmp_path / "runs").mkdir()
    return tmp_path


def _spec(root, name, **data):
    (root / "runs" / f"{name}.yaml").write_text(yaml.safe_dump({"notebook": "nb.ipynb", **data}))


def test_runs_write_outputs_skip_when_unchanged_and_isolate_failures(root):
    _spec(root, "exp", grid={"seed": [0, 1, 2]}, parameters={"fail_on": 1})
    out = runs.run_specs(["exp"], runs_root=root / "runs", jobs=2, log=lambda *_: None)
    status = {o.run: o.status for o in out}
    assert status == {"seed-0": "done", "seed-1": "failed", "seed-2": "done"}
    assert "seed 1 is set to fail" in next(o.error for o in out if o.status == "failed")
    done = root / "runs" / "exp" / "seed-2"
    assert json.loads((done / "results.json").read_text()) == {"value": 20, "profile": "tiny"}
    manifest = json.loads((done / "manifest.json").read_text())
    assert manifest["seed"] == 2 and manifest["fingerprint"] and "torch" in manifest["versions"]
    assert (done / "nb.ipynb").exists() and (root / "runs" / "exp" / "seed-1.failed" / "error.txt").exists()
    assert [r["run"] for r in runs.load_results("exp", root / "runs")] == ["seed-0", "seed-2"]

    # Second pass: finished runs are skipped, the failed one is tried again (and fails again).
    again = {o.run: o.status for o in runs.run_specs(["exp"], runs_root=root / "runs", log=lambda *_: None)}
    assert again == {"seed-0": "skipped", "seed-1": "failed", "seed-2": "skipped"}

    # A changed parameter changes the fingerprint: the run is redone.
    _spec(root, "exp", grid={"seed": [0, 1, 2]}, parameters={"fail_on": 5})
    third = {o.run: o.status for o in runs.run_specs(["exp"], runs_root=root / "runs", log=lambda *_: None)}
    assert third == {"seed-0": "done", "seed-1": "done", "seed-2": "done"}
    assert not (root / "runs" / "exp" / "seed-1.failed").exists()


def test_killed_run_is_redone_and_dependents_wait_for_their_needs(root):
    _spec(root, "exp", grid={"seed": [3]})
    _spec(root, "fig", needs=["exp"])
    partial = root / "runs" / "exp" / ".seed-3.partial"
    partial.mkdir(parents=True)
    (partial / "results.json").write_text("{half written")  # what a kill halfway leaves behind
    out = runs.run_specs(["fig"], runs_root=root / "runs", log=lambda *_: None)
    assert [(o.spec, o.status) for o in out] == [("exp", "done"), ("fig", "done")]
    assert not partial.exists()
    assert runs.load_results("exp", root / "runs")[0]["results"]["value"] == 30


def test_dependents_of_a_failed_spec_are_reported_not_run(root):
    _spec(root, "exp", grid={"seed": [0]}, parameters={"fail_on": 0})
    _spec(root, "fig", needs=["exp"])
    out = runs.run_specs(None, runs_root=root / "runs", log=lambda *_: None)
    assert [(o.spec, o.status) for o in out] == [("exp", "failed"), ("fig", "failed")]
    assert "needs exp" in out[1].error


def test_spec_errors_are_clear(root):
    (root / "runs" / "bad.yaml").write_text("notebok: nb.ipynb\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        runs.load_specs(root / "runs")
    (root / "runs" / "bad.yaml").write_text("notebook: nb.ipynb\ndescription: a: b\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        runs.load_specs(root / "runs")


def test_dependencies_are_per_run_and_fingerprints_stable(root):
    _spec(root, "base", grid={"seed": [0, 1]}, parameters={"fail_on": 1})
    _spec(root, "step", grid={"seed": [0, 1]}, needs=["base"])
    _spec(root, "fig", needs=["step"])
    out = {(o.spec, o.run): o for o in runs.run_specs(None, runs_root=root / "runs", jobs=2, log=lambda *_: None)}
    assert out[("step", "seed-0")].status == "done"  # its own base run finished: the failed seed-1 does not block it
    assert out[("step", "seed-1")].status == "failed" and "base/seed-1" in out[("step", "seed-1")].error
    assert out[("fig", "default")].status == "failed"  # a figure reads every run of step
    # Fixed base (a changed parameter: both base runs are redone): step/seed-0 reads results equal to before, so it
    # is skipped; what read the failed run is redone.
    _spec(root, "base", grid={"seed": [0, 1]})
    again = {(o.spec, o.run): o.status for o in runs.run_specs(None, runs_root=root / "runs", log=lambda *_: None)}
    assert again == {("base", "seed-0"): "done", ("base", "seed-1"): "done", ("step", "seed-0"): "skipped",
                     ("step", "seed-1"): "done", ("fig", "default"): "done"}
    third = {o.status for o in runs.run_specs(None, runs_root=root / "runs", log=lambda *_: None)}
    assert third == {"skipped"}


def test_a_run_locked_by_another_process_is_left_alone(root):
    import fcntl

    _spec(root, "exp", grid={"seed": [0, 1]})
    lock_path = root / "runs" / "exp" / ".seed-0.lock"
    lock_path.parent.mkdir(parents=True)
    partial = root / "runs" / "exp" / ".seed-0.partial"
    partial.mkdir()
    (partial / "work.txt").write_text("in progress elsewhere")
    with open(lock_path, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what a second Slurm job running the same spec holds
        out = {o.run: o for o in runs.run_specs(["exp"], runs_root=root / "runs", log=lambda *_: None)}
    assert out["seed-0"].status == "busy" and out["seed-1"].status == "done"
    assert (partial / "work.txt").exists()  # the other process's work in progress is untouched


SEEDS_BODY = """
from pathlib import Path
from aa_lib.runs import save_results
per_seed = []
for s in seeds:
    Path(output_dir, f"seed-{s}").mkdir()
    Path(output_dir, f"seed-{s}", "weights.txt").write_text(f"{subtask} {s}")
    per_seed.append({"subtask": subtask, "seed": s, "value": 10 * s})
save_results(output_dir, {"subtask": subtask, "seeds": seeds, "per_seed": per_seed})
"""


def test_a_run_looping_over_seeds_is_read_back_one_seed_at_a_time(root):
    """The LLF notebooks loop over seeds inside one run (one kernel start per subtask): their dependents find each
    seed's folder and results (`load_seed_results`, `experiments.run_results`)."""
    from aa_lib import experiments as E

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("subtask = 't2t'\nseeds = [0]\noutput_dir = '.'\nprofile = 'tiny'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(SEEDS_BODY)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(root / "seeds.ipynb"))
    (root / "runs" / "pol.yaml").write_text(yaml.safe_dump({"notebook": "seeds.ipynb", "parameters": {"seeds": [1, 2]},
                                                            "grid": {"subtask": ["ti2t", "tv2t"]}}))
    out = runs.run_specs(["pol"], runs_root=root / "runs", log=lambda *_: None)
    assert {o.status for o in out} == {"done"}
    per_seed = runs.load_seed_results("pol", root / "runs")
    assert sorted((r["results"]["subtask"], r["results"]["seed"], r["results"]["value"]) for r in per_seed) == [
        ("ti2t", 1, 10), ("ti2t", 2, 20), ("tv2t", 1, 10), ("tv2t", 2, 20)]
    folder, res = E.run_results("pol", 2, "tv2t", root / "runs")
    assert folder == root / "runs" / "pol" / "subtask-tv2t" / "seed-2" and (folder / "weights.txt").read_text() == "tv2t 2"
    assert res["value"] == 20 and E.run_results("pol", 1, "ti2t", root / "runs")[1]["value"] == 10
    with pytest.raises(FileNotFoundError, match="subtask=ti2t seed=0"):
        E.run_results("pol", 0, "ti2t", root / "runs")
    manifest = json.loads((root / "runs" / "pol" / "subtask-ti2t" / "manifest.json").read_text())
    assert manifest["seed"] == [1, 2]


TORCH_BODY = """
import torch
from aa_lib.runs import save_results
torch.set_num_threads(1)
save_results(output_dir, {"value": float(torch.ones(2).sum())})
"""


def test_a_changed_aa_lib_file_reruns_the_runs_that_imported_it(root, tmp_path, monkeypatch):
    """Fingerprints cover aa_lib's own source: a one-line change in a module a run imported reruns it; a change in
    one it never imported does not. The manifest says under which CPU numerics the number was produced."""
    import shutil

    _notebook(root / "nb.ipynb", TORCH_BODY)
    _spec(root, "exp")
    quiet = dict(runs_root=root / "runs", log=lambda *_: None)
    assert [o.status for o in runs.run_specs(["exp"], **quiet)] == ["done"]
    manifest = json.loads((root / "runs" / "exp" / "default" / "manifest.json").read_text())
    assert {"runs.py", "numerics.py", "subtasks.py", "reported/table2_main_results.csv"} <= set(manifest["code"])
    assert "policies.py" not in manifest["code"] and "experiments.py" not in manifest["code"]
    assert not (root / "runs" / "exp" / "default" / runs.PROVENANCE_FILE).exists()  # folded into the manifest
    num = manifest["numerics"]
    assert num["cpu_model"] and num["torch_threads"] == 1 and num["torch_cpu_capability"]
    if runs.numerics.applies_here():
        assert num["pinned"] and num["torch_cpu_capability"] == "AVX2"
        assert num["env"]["ATEN_CPU_CAPABILITY"] == "avx2" and num["env"]["MKL_CBWR"] == "AVX2"

    # The package as installed, copied: the runner reads aa_lib's files from PACKAGE_ROOT.
    installed, package = runs.PACKAGE_ROOT, tmp_path / "aa_lib"
    shutil.copytree(installed, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(runs, "PACKAGE_ROOT", package)
    assert [o.status for o in runs.run_specs(["exp"], **quiet)] == ["skipped"]
    with open(package / "experiments.py", "a") as f:  # never imported by this run
        f.write("# a comment\n")
    assert [o.status for o in runs.run_specs(["exp"], **quiet)] == ["skipped"]
    with open(package / "subtasks.py", "a") as f:  # imported by every run (aa_lib/__init__)
        f.write("# a comment\n")
    assert [o.status for o in runs.run_specs(["exp"], **quiet)] == ["done"]
    (package / "subtasks.py").unlink()
    assert [o.status for o in runs.run_specs(["exp"], **quiet)] == ["done"]
    # --force still redoes a run whose inputs are all unchanged
    monkeypatch.setattr(runs, "PACKAGE_ROOT", installed)
    assert [o.status for o in runs.run_specs(["exp"], **quiet)] == ["skipped"]
    assert [o.status for o in runs.run_specs(["exp"], force=True, **quiet)] == ["done"]


def test_progress_lines_count_runs_and_estimate_the_rest(root):
    import re

    _spec(root, "exp", grid={"seed": [0, 1, 2]})
    lines = []
    runs.run_specs(["exp"], runs_root=root / "runs", log=lines.append)
    assert re.fullmatch(r"\[1/3, 0:\d\d elapsed, ~0:\d\d left\] exp/seed-0: done in \d+ s", lines[0]), lines[0]
    assert re.fullmatch(r"\[3/3, 0:\d\d elapsed\] exp/seed-2: done in \d+ s", lines[2]), lines[2]
    lines.clear()
    runs.run_specs(["exp"], runs_root=root / "runs", log=lines.append)  # nothing executed: no estimate to give
    assert re.fullmatch(r"\[1/3, 0:00 elapsed\] exp/seed-0: skipped", lines[0]), lines[0]
