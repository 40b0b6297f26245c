"""Every notebook is parameterized, every run spec names a real notebook, and every spec runs at smoke size."""
from __future__ import annotations


import nbformat
import pytest

from aa_lib import runs

NOTEBOOKS = sorted(p for p in (runs.REPO_ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
SPECS = runs.load_specs()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(runs.REPO_ROOT)))
def test_notebook_has_one_parameters_cell_first(path):
    nb = nbformat.read(str(path), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged `parameters`"
    assert code[0] is tagged[0], f"{path.name}: the parameters cell must be the first code cell"
    assert "output_dir" in tagged[0].source and "profile" in tagged[0].source


def test_every_spec_names_a_notebook_and_every_experiment_notebook_has_a_spec():
    used = {spec.notebook.resolve() for spec in SPECS.values()}
    for spec in SPECS.values():
        assert spec.notebook.exists(), f"run spec {spec.name}: no notebook {spec.notebook}"
    orphans = [p for p in NOTEBOOKS if p.resolve() not in used and "tutorials" not in p.parts]
    assert not orphans, f"notebooks no run spec executes: {orphans}"
    runs.ordered(SPECS)  # no cycles, no missing needs


def test_every_spec_runs_at_smoke_size(smoke_batch):
    """The shipped notebooks, with their shipped specs, at tiny sizes: the whole batch path, figures included."""
    outcomes, _, figures_dir = smoke_batch
    failed = [f"{o.spec}/{o.run}: {o.error}" for o in outcomes if o.status != "done"]
    assert not failed, "\n".join(failed)
    assert {o.spec for o in outcomes} == set(runs.load_specs())
    assert any(figures_dir.iterdir())
