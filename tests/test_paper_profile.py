"""Profile paper: the paths YAML is checked before anything runs, the LLF notebooks refuse to guess their inputs, and
the rehearsal (a paper-profile input set written from the mini world in the real layouts) runs every LLF spec and
its figures end to end at smoke size."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from aa_lib import experiments as E
from aa_lib import runs
from aa_lib.inputs import read_parameters, read_paths
from aa_lib.rehearsal import write_inputs

LLF_SPECS = ["policy", "llf_main", "llf_ablation", "llf_feedback_fraction", "table2_main_results",
             "table3_feedback_ablation", "fig5_feedback_fraction", "fig11_llf_vs_models"]
OTHER_SPECS = ["agreement", "table1_agreement"]  # a spec fed by the YAML's `parameters` (the rest: by hand)


def _paths_file(tmp_path, questions="q.jsonl"):
    for name in ("q.jsonl", "a.jsonl", "model", "data.parquet"):
        (tmp_path / name).mkdir() if name == "model" else (tmp_path / name).write_text("")
    entry = {"policy": "model", "data": "data.parquet",
             "benchmarks": {"llava_bench": {"questions": questions, "answers": "a.jsonl"}}}
    path = tmp_path / "paths.yaml"
    path.write_text(yaml.safe_dump({"judge": {"kind": "http", "base_url": "http://127.0.0.1:1/v1", "model": "m"},
                                    "subtasks": {"ti2t": entry}}))
    return path


def test_paths_are_resolved_against_the_yaml_folder(tmp_path):
    got = read_paths(_paths_file(tmp_path))["ti2t"]
    assert got["policy"] == str(tmp_path / "model")
    assert got["benchmarks"]["llava_bench"]["questions"] == str(tmp_path / "q.jsonl")
    assert got["judge"]["base_url"] == "http://127.0.0.1:1/v1"  # not a path: left as written


def test_a_missing_paper_path_fails_with_the_parameters_name_before_any_run(tmp_path, capsys):
    path = _paths_file(tmp_path, questions="llava/missing.jsonl")
    with pytest.raises(FileNotFoundError, match=r"subtasks\.ti2t\.benchmarks\.llava_bench\.questions: .*missing"):
        read_paths(path)
    code = runs.main(["policy", "--profile", "paper", "--inputs", str(path), "--runs-root", str(tmp_path / "r")])
    assert code == 2
    assert "subtasks.ti2t.benchmarks.llava_bench.questions" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing started


def test_spec_parameters_resolve_their_paths_by_name(tmp_path):
    path = _paths_file(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["parameters"] = {"agreement": {"labels_path": "q.jsonl", "n_pairs": 10},
                         "data_composition": {"paper_data": {"ti2t": "data.parquet"}}}
    path.write_text(yaml.safe_dump(raw))
    got = read_parameters(path)
    assert got["agreement"] == {"labels_path": str(tmp_path / "q.jsonl"), "n_pairs": 10}
    assert got["data_composition"]["paper_data"] == {"ti2t": str(tmp_path / "data.parquet")}
    raw["parameters"]["agreement"]["labels_path"] = "labels/missing.csv"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(FileNotFoundError, match=r"parameters\.agreement\.labels_path: .*missing\.csv"):
        read_parameters(path)


def test_a_benchmark_of_another_subtask_is_refused_by_name(tmp_path):
    path = _paths_file(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["subtasks"]["ti2t"]["benchmarks"] = {"air_bench": {"meta": "q.jsonl"}}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"benchmarks\.air_bench: not a Table 2 benchmark of ti2t"):
        read_paths(path)


def test_the_paper_profile_without_inputs_says_how_to_give_them():
    with pytest.raises(ValueError, match="--inputs paths.yaml"):
        E.cell_inputs("paper", {})
    assert E.cell_inputs("tiny", {}).policy is None


def test_rehearsal_end_to_end_at_smoke_size(tmp_path):
    paths = write_inputs(tmp_path / "rehearsal", "smoke", subtasks=["ti2t"])
    figures = tmp_path / "figures"
    outcomes = runs.run_specs(LLF_SPECS + OTHER_SPECS, profile="paper", smoke=True, inputs=read_paths(paths),
                              parameters=read_parameters(paths), runs_root=tmp_path / "runs",
                              specs_root=runs.RUNS_ROOT, figures_dir=figures, log=lambda line: None)
    assert [(o.spec, o.status) for o in outcomes if o.status != "done"] == []
    assert {o.run for o in outcomes if o.spec == "policy"} == {"paper_subtask-ti2t"}
    policy = json.loads((tmp_path / "runs/policy/paper_subtask-ti2t/results.json").read_text())
    assert policy["checkpoint"] == str(tmp_path / "rehearsal/models/ti2t/policy")  # aligned as it is: no SFT
    assert set(policy["initial"]["benchmarks"]) == {"llava_bench", "mia_bench"}
    assert policy["initial"]["failures"] == {"llava_bench": 0, "mia_bench": 0}
    table = pd.read_csv(figures / "table2_main_results_ours.csv")
    assert set(table["benchmark"]) == {"llava_bench", "mia_bench"} and "initial" in set(table["method"])
    agreement = json.loads((tmp_path / "runs/agreement/paper_default/results.json").read_text())
    assert [r["subtask"] for r in agreement["agreement"]] == ["TI2T"]  # the rehearsal's labels file, read
