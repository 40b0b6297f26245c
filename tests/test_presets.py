"""Tables 5-8 live in aa_lib.presets: the paper profile equals the reported CSV cell for cell, and make_config
hands those values to the trainers' configs."""
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from aa_lib import presets
from aa_lib.figures import REPORTED_DIR

REPO = Path(__file__).resolve().parent.parent


def cell(v):
    """'1e-6' == 1e-06, 'True' == True, '3' == 3."""
    s = str(v).strip()
    if s in ("True", "False"):
        return s == "True"
    try:
        return float(s)
    except ValueError:
        return s


def test_paper_presets_equal_reported_tables_cell_for_cell():
    reported = pd.read_csv(REPORTED_DIR / "tables5to8_hyperparameters.csv", dtype=str)
    ours = presets.render_table("paper")
    assert list(ours.columns) == list(reported.columns)
    assert list(zip(ours.stage, ours.hyperparameter)) == list(zip(reported.stage, reported.hyperparameter))
    for (_, a), (_, b) in zip(ours.iterrows(), reported.iterrows()):
        for col in reported.columns[2:]:
            assert cell(a[col]) == cell(b[col]), (a["stage"], a["hyperparameter"], col)
    assert presets.compare_with_reported(ours, reported) == []


def test_a_changed_preset_is_named_by_row_and_column(monkeypatch):
    changed = {**presets.PAPER["dpo"], "tv2t": replace(presets.PAPER["dpo"]["tv2t"], beta=0.2)}
    monkeypatch.setitem(presets.PAPER, "dpo", changed)
    problems = presets.compare_with_reported(presets.render_table("paper"), presets_reported())
    assert problems == ["row ('dpo', 'scale_coefficient_beta') column TV2T: presets 0.2, reported 0.1"]


def presets_reported():
    return pd.read_csv(REPORTED_DIR / "tables5to8_hyperparameters.csv")


def test_make_config_carries_the_preset(tmp_path):
    ppo = presets.make_config("ppo", "t2i", tmp_path, profile="paper", use_cpu=True, bf16=False)
    assert (ppo.learning_rate, ppo.critic_learning_rate, ppo.temperature) == (1e-5, 5e-6, 0.2)
    assert ppo.critic_lr_scheduler_type == "constant" and ppo.gradient_accumulation_steps == 4
    assert ppo.warmup_steps == 0.03 and ppo.critic_warmup_ratio == 0.03 and ppo.num_train_epochs == 3
    dpo = presets.make_config("dpo", "TV2T", tmp_path, profile="paper", use_cpu=True, bf16=False)
    assert (dpo.beta, dpo.learning_rate, dpo.per_device_train_batch_size, dpo.max_length) == (0.1, 1e-7, 3, 4096)
    rm = presets.make_config("reward_model", "ta2t", tmp_path, profile="paper", use_cpu=True, bf16=False)
    assert rm.max_length == 2048 and rm.lr_scheduler_type.value == "cosine"
    sft = presets.make_config("feedback_model", "ti2t", tmp_path)  # tiny: CPU-sized, same schedule shape
    assert sft.bf16 is False and sft.warmup_steps == 0.03 and sft.max_length == 512
    assert presets.make_config("dpo", "ti2t", tmp_path, beta=0.3).beta == 0.3  # overrides win


def test_unknown_preset_errors_say_what_exists():
    with pytest.raises(KeyError, match="the paper trains only ti2t"):
        presets.get_preset("dpo", "t2v", "paper")
    # A text-only checkpoint at profile paper (the rehearsal's SmolLM2) takes the TI2T column.
    assert presets.get_preset("dpo", "t2t", "paper") == presets.get_preset("dpo", "ti2t", "paper")
    with pytest.raises(KeyError, match="known: tiny, paper"):
        presets.get_preset("dpo", "ti2t", "huge")
    assert presets.get_preset("dpo", "t2t", "tiny").beta == 0.1


def test_tables_notebook_renders_presets_beside_reported(tmp_path):
    out, figs = tmp_path / "run", tmp_path / "figs"
    out.mkdir()
    cmd = [sys.executable, "-m", "papermill", str(REPO / "notebooks/figures/tables5to8_hyperparameters.ipynb"),
           str(out / "nb.ipynb"), "-p", "output_dir", str(out), "-p", "figures_dir", str(figs), "-p", "profile",
           "tiny", "--cwd", str(REPO), "-k", "python3", "--no-progress-bar"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["paper_profile_mismatches"] == 0 and results["profile"] == "tiny"
    table = pd.read_csv(figs / "tables5to8_hyperparameters.csv", dtype=str)
    row = table[(table.stage == "ppo") & (table.hyperparameter == "sampling_temperature")].iloc[0]
    assert (cell(row["T2I"]), cell(row["T2I (paper)"])) == (0.2, 0.2)
    row = table[(table.stage == "dpo") & (table.hyperparameter == "learning_rate")].iloc[0]
    assert cell(row["TI2T"]) == presets.get_preset("dpo", "ti2t", "tiny").learning_rate
    assert cell(row["TI2T (paper)"]) == 1e-6
    assert "Tables 5-8" in (figs / "tables5to8_hyperparameters.md").read_text()


def test_the_papers_bf16_stays_on_gpus(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU host trains the paper presets in bf16")
    # A CPU-only host (the rehearsal) trains in float32; Tables 5-8 still show the paper's bf16.
    assert presets.get_preset("dpo", "ti2t", "paper").bf16 is True
    assert presets.make_config("dpo", "ti2t", tmp_path, profile="paper").bf16 is False
