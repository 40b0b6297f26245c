"""align-anything-mini: schema, determinism, media checker, rubric, annotators, writing to disk."""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from aa_lib import mini
from aa_lib.media import encode_mp4, encode_png, encode_wav, load_audio, load_image, load_video
from aa_lib.mini import checker, render, world
from aa_lib.subtasks import SUBTASKS

N = 24  # rows per subtask in the shared fixture


@pytest.fixture(scope="module")
def rows():
    return {st: mini.generate(st, N, seed=0) for st in SUBTASKS}


def _is_media(v):
    return isinstance(v, dict) and "path" in v and ("bytes" in v or "frames" in v)


@pytest.mark.parametrize("subtask", list(SUBTASKS))
def test_rows_have_exact_schema_and_valid_values(rows, subtask):
    st = SUBTASKS[subtask]
    for i, row in enumerate(rows[subtask]):
        assert list(row) == st.columns() + ["mini_meta"], f"row {i}"
        for dim in st.dimensions:
            for c in st.rate_columns(dim):
                assert type(row[c]) is int and 0 <= row[c] <= 3, (i, c, row[c])
            for c in st.rationale_columns(dim):
                assert isinstance(row[c], str) and row[c], (i, c)
            assert row[st.preferred_column(dim)] in (1, 2)
        assert row[st.overall_column] in (1, 2)
        for c in st.critique_columns:
            assert row[c].startswith("##Critique: ") and " ##Refinement: " in row[c], (i, c)
        assert row["overall_textfeedback"].startswith("##Reason: ") and " ##Refinement: " in row["overall_textfeedback"]
        for c in st.source_columns:
            assert row[c] in mini.RESPONDENTS
        if st.text_output or st.name == "ti2ti":
            assert all(isinstance(row[c], str) and row[c] for c in st.response_columns)
        else:
            assert all(_is_media(row[c]) for c in st.response_columns)
        assert all(_is_media(row[c]) for c in st.response_media_columns or ())
        if st.media_column:
            assert _is_media(row[st.media_column])
        meta = json.loads(row["mini_meta"])
        assert meta["subtask"] == subtask and meta["split"] == "train"
        assert meta["prompt_type"] in mini.prompt_types(subtask)
        assert len(meta["respondents"]) == 2 and len(meta["faults"]) == 2 and "truth" in meta
    if subtask == "t2a":
        assert all(isinstance(r["refine_prompt"], str) and isinstance(r["reasoning"], str) for r in rows[subtask])


def _media_fingerprint(rows):
    return [mini.media_bytes(v) for r in rows for v in r.values() if _is_media(v)]


def test_deterministic_by_seed(rows):
    for st in ("ti2t", "t2a", "tv2t", "t2v", "t2t"):
        again = mini.generate(st, 6, seed=0)
        strip = lambda rs: [{k: v for k, v in r.items() if not _is_media(v)} for r in rs]  # noqa: E731
        assert strip(again) == strip(rows[st][:6]), st
        assert _media_fingerprint(again) == _media_fingerprint(rows[st][:6]), st
        other = mini.generate(st, 6, seed=1)
        assert strip(other) != strip(again), st
    assert _media_fingerprint(mini.generate("t2i", 3, seed=1)) != _media_fingerprint(rows["t2i"][:3])


def test_image_checker_recovers_truth_from_pixels_and_png():
    cfg = world.WorldConfig()
    rng = np.random.default_rng(5)
    hits = {"color": 0, "shape": 0, "position": 0, "count": 0}
    n = 120
    for i in range(n):
        scene = world.image_scene(rng, cfg, count=int(rng.integers(1, 4)))
        img = render.render_image(scene)
        if i % 4 == 0:  # through the PNG round trip too
            img = np.asarray(load_image(encode_png(img)))
        got = checker.read_image(img)
        for k in hits:
            hits[k] += got[k] == scene[k]
    acc = {k: v / n for k, v in hits.items()}
    assert min(acc.values()) >= 0.95, acc


def test_image_checker_reads_faults_and_shape_size_knob():
    rng = np.random.default_rng(2)
    scene = world.image_scene(rng, world.WorldConfig())
    assert checker.read_image(render.render_image({**scene, "blank": True}))["blank"]
    assert checker.read_image(render.render_image({**scene, "harmful": True}))["harmful"]
    noisy = checker.read_image(render.render_image({**scene, "noise": 22.0}))
    assert noisy["noise"] > 12 > checker.read_image(render.render_image(scene))["noise"]
    big = world.make_config(shape_radius=(7, 7))
    small = world.make_config(shape_radius=(3, 3))
    a_big = checker.read_image(render.render_image(world.image_scene(np.random.default_rng(0), big)))["area"]
    a_small = checker.read_image(render.render_image(world.image_scene(np.random.default_rng(0), small)))["area"]
    assert a_big > 3 * a_small


def test_video_checker_recovers_direction_colour_shape_through_mp4(tmp_path):
    cfg = world.WorldConfig()
    rng = np.random.default_rng(3)
    ok = 0
    for i in range(16):
        scene = world.video_scene(rng, cfg)
        frames = render.render_video(scene)
        if i < 4:
            p = tmp_path / f"v{i}.mp4"
            p.write_bytes(encode_mp4(frames))
            frames = load_video(str(p))
        got = checker.read_video(frames)
        ok += (got["direction"], got["color"], got["shape"]) == (scene["direction"], scene["color"], scene["shape"])
    assert ok >= 15
    jit = checker.read_video(render.render_video({**scene, "jitter": 4.0}))
    clean = checker.read_video(render.render_video(scene))
    assert np.std(jit["steps"]) > np.std(clean["steps"])


def test_audio_checker_recovers_count_and_pitch_through_wav():
    cfg = world.WorldConfig()
    rng = np.random.default_rng(4)
    ok = 0
    for i in range(40):
        scene = world.audio_scene(rng, cfg)
        wave = render.render_audio(scene)
        if i % 4 == 0:
            wave = load_audio(encode_wav(wave))
        got = checker.read_audio(wave, cfg)
        ok += (got["count"], got["pitch"]) == (scene["count"], scene["pitch"])
    assert ok >= 38
    assert checker.read_audio(render.render_audio({**scene, "blank": True}))["blank"]
    assert checker.read_audio(render.render_audio({**scene, "harmful": True}))["harmful"]
    # closer pitch classes with overlapping jitter make the checker (and the task) harder
    hard = world.make_config(pitch_ratio=1.08, pitch_jitter=0.08)
    rng = np.random.default_rng(4)
    hard_ok = sum(checker.read_audio(render.render_audio(s := world.audio_scene(rng, hard)), hard)["pitch"] == s["pitch"]
                  for _ in range(40))
    assert hard_ok < ok


@pytest.mark.parametrize("subtask", list(SUBTASKS))
def test_rubric_prefers_expert_to_faulty_respondents(subtask):
    rs = mini.generate(subtask, 60, seed=11) if subtask not in ("t2v",) else mini.generate(subtask, 40, seed=11)
    expert, faulty = [], []
    for r in rs:
        meta = json.loads(r["mini_meta"])
        for k, name in enumerate(meta["respondents"]):
            (expert if name == "mini-expert" else faulty).append(meta["overall_scores"][k])
    assert expert and faulty
    assert np.mean(expert) > np.mean(faulty), (np.mean(expert), np.mean(faulty))


def _item(subtask, ptype, seed=0, **truth):
    rng = np.random.default_rng(seed)
    for _ in range(500):
        it = world.make_item(rng, subtask, world.WorldConfig(), ptype)
        if all(it["truth"].get(k) == v for k, v in truth.items()) and it["constraint"] is None:
            return it
    raise AssertionError("no such item")


def test_wrong_attribute_gets_critique_naming_the_right_value():
    it = _item("ti2t", "shape", shape="triangle")
    good = mini.rubric_score(it, f"It is a {it['truth']['color'].upper()} Triangle!!")
    bad = mini.rubric_score(it, f"it is a {it['truth']['color']} circle .")
    assert good["scores"]["objective_rules"] == 3 and good["overall"] > bad["overall"]
    assert bad["scores"]["objective_rules"] == 0
    assert "triangle" in bad["refinement"] and "circle" in bad["critique"]
    sq = _item("ti2t", "color", shape="square")
    missing = mini.rubric_score(sq, f"{sq['truth']['color']} .")
    assert missing["scores"]["information_richness"] == 2 and "square" in missing["refinement"]
    t2t = _item("t2t", "arithmetic")
    ans = t2t["truth"]["answer"]
    assert mini.rubric_score(t2t, f"The answer: {ans + 1}")["scores"]["objective_rules"] == 0
    assert str(ans) in mini.rubric_score(t2t, f"{ans + 1}")["refinement"]
    assert mini.judge_pair(t2t, t2t["reference"], f"{ans + 1}") == 1
    assert mini.judge_pair(t2t, t2t["reference"], t2t["reference"].upper()) == "tie"


def test_rubric_checks_media_from_pixels():
    it = _item("t2i", "draw", color="red", position="left")
    cfg = world.WorldConfig()
    right = render.render_image({k: v for k, v in it["truth"].items()})
    wrong = render.render_image({**it["truth"], "color": "blue"})
    s_right, s_wrong = mini.rubric_score(it, right), mini.rubric_score(it, wrong)
    assert s_right["scores"]["prompt_following"] == 3 > s_wrong["scores"]["prompt_following"]
    assert "red" in s_wrong["refinement"]
    assert mini.judge_pair(it, encode_png(right), encode_png(wrong)) == 1
    a = _item("t2a", "play", count=2, pitch="high")
    wrong_count = render.render_audio({**a["truth"], "count": 3})
    out = mini.rubric_score(a, wrong_count)
    assert out["scores"]["prompt_following"] < 3 and "two" in out["refinement"]
    v = _item("t2v", "animate", direction="right")
    left = render.render_video({**v["truth"], "direction": "left"})
    assert "right" in mini.rubric_score(v, left)["refinement"]
    assert mini.rubric_score(v, render.render_video(v["truth"]))["scores"]["instruction_following"] == 3
    del cfg


def test_refusals_score_high_on_safety_for_unsafe_prompts():
    for subtask in ("t2t", "ti2t", "tv2t", "ta2t"):
        it = world.make_item(np.random.default_rng(1), subtask, world.WorldConfig(), "unsafe")
        refusal = mini.rubric_score(it, world.REFUSAL)
        comply = mini.rubric_score(it, "first take the square and hit them hard .")
        assert refusal["scores"]["safety"] == 3 and comply["scores"]["safety"] == 0, subtask
        assert refusal["overall"] > comply["overall"]
    it = world.make_item(np.random.default_rng(1), "t2i", world.WorldConfig(), "unsafe")
    blank = render.render_image({**it["truth"], "blank": True})
    harm = render.render_image({**it["truth"], "harmful": True})
    assert mini.rubric_score(it, blank)["scores"]["safety"] == 3
    assert mini.rubric_score(it, harm)["scores"]["safety"] == 0
    # over-refusal of a harmless prompt costs prompt following, not safety
    safe = _item("ti2t", "color")
    over = mini.rubric_score(safe, "sorry , i can not help with that .")
    assert over["scores"]["safety"] == 3 and over["scores"]["prompt_following"] == 0


def test_annotator_agreement_in_range_and_feedback_helps(rows):
    subset = {st: mini.generate(st, 60, seed=5) for st in ("ti2t", "t2a")}
    labels = mini.label_study(subset, n_groups=4, n_annotators=6, n_pairs=40, seed=0)
    table = mini.agreement(labels)
    assert list(table["subtask"]) == ["TI2T", "T2A"]
    for col in ("without_lf_mean", "with_lf_mean"):
        assert table[col].between(0, 100).all()
    assert (table["without_lf_std"] >= 0).all()
    assert (table["with_lf_mean"] > table["without_lf_mean"]).all(), table
    assert mini.pairwise_agreement(np.array([[1, 2, 1], [1, 2, 2]])) == pytest.approx(200 / 3)


def test_write_jsonl_and_parquet_with_relative_media(rows, tmp_path):
    for st in ("ti2t", "tv2t", "ta2t", "t2i", "t2v", "t2a", "ti2ti"):
        path = mini.write(rows[st][:3], tmp_path / st)
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        assert len(lines) == 3 and list(lines[0]) == SUBTASKS[st].columns() + ["mini_meta"]
        sub = SUBTASKS[st]
        cols = [c for c in (sub.media_column,) if c] + list(sub.response_media_columns or ())
        cols += [] if sub.text_output or st == "ti2ti" else list(sub.response_columns)
        for c in cols:
            rel = lines[0][c]
            assert isinstance(rel, str) and not rel.startswith("/"), (st, c, rel)
            assert (tmp_path / st / rel).is_file(), (st, c, rel)
            if rel.endswith(".mp4"):
                assert rel.startswith("./videos/")
                assert load_video(rel, media_root=tmp_path / st).shape[1:] == (32, 32, 3)
    img = load_image(json.loads((tmp_path / "ti2t" / "ti2t.jsonl").read_text().splitlines()[0])["image"],
                     media_root=tmp_path / "ti2t")
    meta = json.loads(rows["ti2t"][0]["mini_meta"])
    got = checker.read_image(img)
    assert (got["color"], got["shape"]) == (meta["truth"]["color"], meta["truth"]["shape"])
    pq = mini.write("t2t", tmp_path / "pq", fmt="parquet", n=5)
    df = pd.read_parquet(pq)
    assert list(df.columns) == SUBTASKS["t2t"].columns() + ["mini_meta"] and len(df) == 5
    pq2 = mini.write(rows["ti2t"][:2], tmp_path / "pq2", fmt="parquet")
    first = pd.read_parquet(pq2)["image"].iloc[0]
    assert first["path"].startswith("images/") and first["bytes"][:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="fmt"):
        mini.write(rows["t2t"], tmp_path, fmt="csv")


def test_make_split_and_heldout_prompts():
    sp = mini.make_split("ti2t", 5, 3, 4, seed=0)
    assert [len(sp[k]) for k in ("train", "val", "heldout")] == [5, 3, 4]
    assert {json.loads(r["mini_meta"])["split"] for r in sp["val"]} == {"val"}
    held = sp["heldout"][0]
    assert set(held) == {"question", "image", "mini_meta"}
    meta = json.loads(held["mini_meta"])
    assert "truth" in meta and "respondents" not in meta
    assert sp["train"][0]["question"] != sp["val"][0]["question"] or sp["train"][0]["mini_meta"] != sp["val"][0]["mini_meta"]
    # a held-out prompt is judgeable: its reference answer scores full marks
    ref = mini.rubric_score(held, meta["reference"])
    assert min(ref["scores"].values()) == 3


def test_bad_options_and_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="unknown world option"):
        mini.generate("ti2t", 1, shape_size=3)
    with pytest.raises(ValueError, match="image_size"):
        mini.generate("ti2t", 1, image_size=15)
    with pytest.raises(KeyError, match="unknown subtask"):
        mini.generate("x2y", 1)
    with pytest.raises(ValueError, match="mini_meta"):
        mini.rubric_score({"question": "hi"}, "x")


def test_corpus_and_vocabulary_cover_generated_text():
    vocab = set(mini.vocabulary())
    assert 100 < len(vocab) <= 400
    assert set(mini.prompt_types()) == set(SUBTASKS)
    for st in SUBTASKS:
        for r in mini.generate(st, 10 if st != "t2v" else 5, seed=77):
            for k, v in r.items():
                if isinstance(v, str) and k != "mini_meta" and not v.startswith("mini-"):
                    unknown = {w.lower() for w in v.split()} - vocab
                    assert not unknown, (st, k, unknown)
    refs = [world.make_item(np.random.default_rng(i), "ti2t", world.WorldConfig(), "describe")["reference"]
            for i in range(5)]
    assert all(len(r.split()) == 4 for r in refs)


def test_generation_rate_200_rows_per_subtask():
    rates = {}
    for st in SUBTASKS:
        t = time.perf_counter()
        out = mini.generate(st, 200, seed=3)
        rates[st] = round(200 / (time.perf_counter() - t), 1)
        assert len(out) == 200
    print("mini rows/s:", rates)
