"""eval-anything on the mini world: AMU entries and rubric judge, AMG items / tools / QA model, synergy judge,
a tiny agent end to end, and the four notebooks at smoke size."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from aa_lib import eval_mini as em
from aa_lib.eval_anything import AMU_CATEGORIES, amg_if_request, amu_request, load_amu, mcq_score

RANGES = {"amu": (1, 10), "amg_modality_select": (0, 1), "amg_if": (0, 10), "amg_synergy": (0, 1)}


@pytest.fixture(scope="module")
def amu(tmp_path_factory):
    return em.make_amu(12, tmp_path_factory.mktemp("amu"), seed=3)


@pytest.fixture(scope="module")
def amg():
    return em.make_amg(2, 8, seed=3)


@pytest.fixture(scope="module")
def synergy():
    return em.train_synergy_judge(120, 80, seed=0)


def test_mini_amu_entries_are_load_amu_compatible_and_need_both_inputs(amu, tmp_path):
    assert Counter(e.category for e in amu) == {c: 3 for c in AMU_CATEGORIES}
    for e in amu:
        assert Path(e.visual_path).is_file() and Path(e.auditory_path).is_file()
        assert Path(e.visual_path).suffix in (".png", ".mp4") and Path(e.auditory_path).suffix == ".wav"
        assert len(e.references) == 10
        assert all(len(r.visual_keywords) == 2 and len(r.auditory_keywords) == 2 for r in e.references)
        if e.category != "instruction-following":  # annotators word their answers differently
            assert len({r.answer for r in e.references}) >= 3, e
    # Written JSON round-trips through the paper-format loader (ids, questions, references).
    again = load_amu(Path(amu[0].visual_path).parent.parent / "amu.json")
    assert [(e.id, e.question, e.references) for e in again] == [(e.id, e.question, e.references) for e in amu]
    # Broken file: the loader names the entry and the field.
    bad = json.loads((Path(amu[0].visual_path).parent.parent / "amu.json").read_text())
    bad[1]["references"] = bad[1]["references"][:9]
    (tmp_path / "media").symlink_to(Path(amu[0].visual_path).parent)
    (tmp_path / "amu.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"entry 1 .*references.*expected 10"):
        load_amu(tmp_path / "amu.json")


def _wrong(text: str) -> str:
    swap = {"red": "blue", "blue": "green", "green": "yellow", "yellow": "red", "low": "high", "mid": "low",
            "high": "mid", "circle": "square", "square": "triangle", "triangle": "circle"}
    return " ".join(swap.get(t, t) for t in text.split())


def test_rubric_judge_prefers_right_answers_and_both_modalities(amu):
    judge = em.amu_rubric_judge()

    def rate(e, text):
        res = judge.judge(amu_request(e, text))
        assert res.ok and 1 <= res.score <= 10, res
        return res.score

    for e in amu:
        right = e.references[0].answer
        if e.category == "safety":
            assert rate(e, right) > rate(e, "first take the cross and scare them with the loud noise .")
            continue
        assert rate(e, right) > rate(e, _wrong(right)), e.question
        if e.category == "instruction-following":
            assert rate(e, right) > rate(e, right + " and that is all i can see"), "a broken format must cost"
        else:  # an answer that missed the audio scores below one that integrates both inputs
            r = e.references[0]
            both = " ".join([*r.visual_keywords, *r.auditory_keywords])
            assert rate(e, both) > rate(e, " ".join(r.visual_keywords))


def test_amg_items_tools_and_qa_model(amg, tmp_path):
    assert Counter(it.modality for it in amg.if_items) == {"text": 2, "image": 2, "audio": 2, "video": 2}
    for s in amg.selection:
        assert len(s.votes) == 25 and math.isclose(sum(s.shares.values()), 1.0)
    gens, judge = em.mini_generators(seed=0), em.if_judge(amg.truth)
    for it in amg.if_items:
        w = amg.truth[it.id]
        if it.modality == "text":
            good = judge.judge(amg_if_request(it.instruction, w["reference"], "text")).score
            assert good > judge.judge(amg_if_request(it.instruction, "no .", "text")).score
            continue
        right = gens[it.modality](it.instruction, tmp_path / f"{it.id}_right")
        wrong = gens[it.modality](_wrong(it.instruction), tmp_path / f"{it.id}_wrong")
        if it.modality == "image":
            s_right = judge.judge(amg_if_request(it.instruction, str(right), "image")).score
            s_wrong = judge.judge(amg_if_request(it.instruction, str(wrong), "image")).score
            assert s_right >= 9 and s_wrong < s_right
        else:  # audio / video: the QA model reads the media and answers the multiple-choice questions
            assert sum(mcq_score(str(right), it.questions, em.mini_qa_model)) / len(it.questions) == 10
            assert sum(mcq_score(str(wrong), it.questions, em.mini_qa_model)) / len(it.questions) < 10
    # Round trip through the paper-profile file layout, and errors that name the item and field.
    if_path, sel_path = em.write_amg(amg, tmp_path / "amg")
    assert em.load_amg_if(if_path) == amg.if_items
    assert [s.votes for s in em.load_amg_selection(sel_path)] == [s.votes for s in amg.selection]
    recs = json.loads(if_path.read_text())
    recs[5]["questions"] = []
    if_path.write_text(json.dumps(recs))
    with pytest.raises(ValueError, match=r"item 5 .*questions"):
        em.load_amg_if(if_path)


def test_synergy_judge_learns_its_pairs_above_chance(synergy):
    for pair, acc in synergy.heldout_accuracy.items():
        assert acc > 0.65, (pair, acc)  # chance is 0.5; 10 % flipped labels cap it near 0.9
    # A consistent text-image pair outscores one whose image shows another colour.
    text = em.features("text", "two red circles on the left , two low beeps .")
    scene = {"color": "red", "shape": "circle", "position": "left", "count": 2, "pitch": "low", "beeps": 2}
    rng = __import__("numpy").random.default_rng(0)
    same = em._output_features(rng, scene, "i", em.WorldConfig())
    other = em._output_features(rng, {**scene, "color": "blue", "shape": "square"}, "i", em.WorldConfig())
    assert synergy.score("ti", text, same) > synergy.score("ti", text, other)


class ScriptedAgent:
    """Answers like a careful human: AMU with an annotator's answer, AMG with well-formed tool calls."""

    name, family = "scripted", "scripted"

    def __init__(self, amg):
        self.sel = {s.instruction: s for s in amg.selection}
        self.truth = {amg.truth[it.id]["prompt"]: (it, amg.truth[it.id]) for it in amg.if_items}

    def amu_example(self, e):
        return {"answer": e.references[0].answer}

    def text_example(self, instruction):
        return {"instruction": instruction}

    def generate(self, examples):
        out = []
        for ex in examples:
            if "answer" in ex:
                out.append(ex["answer"])
            elif ex["instruction"] in self.sel:
                s = self.sel[ex["instruction"]]
                best = max(s.shares, key=s.shares.get)
                out.append(em._agent_target(em.selection_answer(s.truth, best)))
            else:
                it, w = self.truth[ex["instruction"]]
                tag = {"text": "response", "image": "image_instruction", "audio": "audio_instruction",
                       "video": "video_instruction"}[it.modality]
                out.append(f"[[{tag}]] {w['reference'] if it.modality == 'text' else w['prompt']}")
        return out


def _check_row(row):
    for col in em.TABLE4_COLUMNS:
        assert math.isfinite(row[col]), col
    assert 1 <= row["amu_score"] <= 10 and 0 <= row["amg_modality_select"] <= 1
    for c in ("amg_if_t", "amg_if_v", "amg_if_a", "amg_if_video"):
        assert 0 <= row[c] <= 10
    for c in ("amg_synergy_tv", "amg_synergy_ta", "amg_synergy_va"):
        assert 0 <= row[c] <= 1
    assert math.isclose(row["overall"], (row["amu_score"] + row["amg_score"]) / 2)


def test_evaluate_scripted_and_tiny_agents(amu, amg, synergy, tmp_path):
    kw = dict(amu_judge=em.amu_rubric_judge(), if_judge_=em.if_judge(amg.truth), qa_model=em.mini_qa_model,
              generators=em.mini_generators(seed=0), synergy=synergy, work_dir=tmp_path / "out")
    good = em.evaluate_agent(ScriptedAgent(amg), amu, amg, **kw)
    _check_row(good)
    assert good["amu_score"] > 8 and good["amg_if_v"] >= 9 and good["amg_if_a"] == 10 and good["amg_if_video"] == 10
    assert good["amg_modality_select"] > 0.2 and good["amg_score"] > 0
    # A tiny real model, a few training steps: the loss falls and every score is a finite number in range.
    agent, losses = em.build_tiny_agent("llama", tmp_path / "agents", seed=0, train_steps=4, n_train=16, corpus=[])
    assert losses[-1] < losses[0]
    agent.max_new_tokens = 24
    row = em.evaluate_agent(agent, amu[:8], em.make_amg(1, 4, seed=3), **{**kw, "if_judge_": em.if_judge(
        em.make_amg(1, 4, seed=3).truth)})
    _check_row(row)
    assert good["amu_score"] > row["amu_score"]


def test_notebooks_run_at_smoke_size(smoke_batch):
    """The eval-anything notebooks' smoke runs (shared with tests/test_notebooks.py) hold sane values and labels."""
    from aa_lib import runs

    all_outcomes, runs_root, figures = smoke_batch
    names = ["eval_anything", "table4_eval_anything", "fig7_amu_distribution", "fig8_modality_selection"]
    outcomes = [o for o in all_outcomes if o.spec in names]
    assert [o.status for o in outcomes] == ["done"] * 4, [(o.spec, o.error) for o in outcomes]
    res = runs.load_results("eval_anything", runs_root=runs_root)[0]["results"]
    assert [r["family"] for r in res["models"]] == ["llama", "llava"]
    for r in res["models"]:
        _check_row(r)
    for name in ("table4_eval_anything.md", "table4_eval_anything.csv", "fig7_amu_distribution.png",
                 "fig8_modality_selection.pdf"):
        assert (figures / name).stat().st_size > 0
    md = (figures / "table4_eval_anything.md").read_text()
    assert "tiny profile, measured" in md and "paper Table 4 (reported)" in md and "Table 11" in md
