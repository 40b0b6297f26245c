"""aa_lib.data: every source kind and format loads, bad rows are named, and every subtask converts to TRL formats."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from aa_lib import data
from aa_lib.data import DataError, DataWarning, decode_media, load
from aa_lib.media import encode_mp4, encode_png, encode_wav, write_bytes_atomic
from aa_lib.subtasks import SUBTASKS, get_subtask

COLORS = [(255, 0, 0), (0, 0, 255), (0, 200, 0)]


# ----------------------------------------------------------------------------- synthetic world
def make_media(root: Path) -> dict[str, list[str]]:
    """Tiny real media files under root, by modality, as paths relative to root."""
    out = {"image": [], "audio": [], "video": []}
    for k, color in enumerate(COLORS):
        img = np.zeros((32, 32, 3), np.uint8)
        img[:] = color
        write_bytes_atomic(root / f"img/{k}.png", encode_png(img))
        out["image"].append(f"img/{k}.png")
        wave = 0.3 * np.sin(2 * np.pi * (220 + 110 * k) * np.arange(1600) / 16000).astype(np.float32)
        write_bytes_atomic(root / f"aud/{k}.wav", encode_wav(wave, 16000))
        out["audio"].append(f"aud/{k}.wav")
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    for t in range(4):
        frames[t, :, : 8 * (t + 1)] = 200
    write_bytes_atomic(root / "vid/0.mp4", encode_mp4(frames))
    write_bytes_atomic(root / "vid/1.mp4", encode_mp4(frames[::-1].copy()))
    out["video"].append("vid/0.mp4")
    for t in range(4):  # a video given as a folder of frames
        write_bytes_atomic(root / f"vid/frames/{t:03d}.png", encode_png(frames[t]))
    out["video"] += ["vid/frames", "./vid/1.mp4"]  # the published tv2t rows use "./x/y.mp4"
    return out


def make_rows(subtask: str, root: Path, n: int = 4) -> list[dict]:
    """n valid rows of `subtask` in the align-anything schema, media as relative paths under root."""
    st = get_subtask(subtask)
    media = make_media(root)
    rows = []
    for i in range(n):
        row = {st.prompt_column: f"prompt number {i}?"}
        if st.media_column:
            row[st.media_column] = media[st.inputs[1]][i % 3]
        for k, col in enumerate(st.response_columns):
            if st.text_output or st.response_media_columns:
                row[col] = f"answer {k + 1} to prompt {i}"
            else:
                row[col] = media[st.response_modality][(i + k) % 3]
        for k, col in enumerate(st.response_media_columns or ()):
            row[col] = media["image"][(i + k) % 3]
        for k, col in enumerate(st.source_columns):
            row[col] = f"model-{k}"
        for d, dim in enumerate(st.dimensions):
            r1, r2 = st.rate_columns(dim)
            row[r1], row[r2] = (i + d) % 4, 3 - (i + d) % 4
            for k, col in enumerate(st.rationale_columns(dim)):
                row[col] = f"{dim.name} rationale {k + 1}"
            row[st.preferred_column(dim)] = 1 + (i + d) % 2
        for k, col in enumerate(st.critique_columns):
            row[col] = f"##Critique: weak point {k + 1}. ##Refinement: fix {k + 1}."
        if st.feedback_column:
            row[st.feedback_column] = "##Reason: r ##Refinement: f"
        row[st.overall_column] = 1 + i % 2
        for col in st.extra_columns:
            row[col] = f"{col} text"
        row["mini_meta"] = json.dumps({"i": i})
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- every subtask
@pytest.mark.parametrize("name", list(SUBTASKS))
def test_subtask_loads_and_converts(tmp_path, name):
    st = get_subtask(name)
    rows = make_rows(name, tmp_path)
    ds = load(write_jsonl(tmp_path / "d.jsonl", rows), name)
    assert len(ds) == 4 and ds.info.config_name == st.config
    assert ds.column_names == st.columns() + ["mini_meta"]  # extra columns pass through
    assert json.loads(ds[2]["mini_meta"]) == {"i": 2}
    assert ds[1][st.overall_column] == 2 and ds.features[st.overall_column].dtype == "int64"
    in_mod = st.inputs[1] if st.media_column else None
    out_mod = data._response_modality(st)
    if in_mod:  # media references are absolute paths; decode_media gives arrays of the right kind
        raw = ds.with_format("arrow")[:].column(st.media_column).to_pylist()[0]
        assert Path(raw["path"]).is_absolute() and raw["bytes"] is None
        check_decoded(decode_media(ds[0], st.media_column, subtask=st), in_mod)

    pref = data.to_preference(ds)
    keys = {"prompt", "chosen", "rejected"} | ({f"{in_mod}s"} if in_mod else set())
    keys |= {f"chosen_{out_mod}s", f"rejected_{out_mod}s"} if out_mod else set()
    assert set(pref.column_names) == keys and len(pref) == 4
    ex = pref[1]  # row 1 prefers response 2
    user = ex["prompt"][0]
    assert user["role"] == "user"
    if name == "t2t":
        assert user["content"] == "prompt number 1?"
        assert ex["chosen"] == [{"role": "assistant", "content": "answer 2 to prompt 1"}]
    else:
        assert user["content"][-1] == {"type": "text", "text": "prompt number 1?"}
        assert [p["type"] for p in user["content"][:-1]] == ([in_mod] if in_mod else [])
    if st.text_output and name != "t2t":
        assert ex["chosen"][0]["content"] == [{"type": "text", "text": "answer 2 to prompt 1"}]
        assert ex["rejected"][0]["content"] == [{"type": "text", "text": "answer 1 to prompt 1"}]
    if out_mod:
        assert ex["chosen"][0]["content"][-1] == {"type": out_mod, "text": None}
        chosen_media, rejected_media = ex[f"chosen_{out_mod}s"], ex[f"rejected_{out_mod}s"]
        assert len(chosen_media) == len(rejected_media) == 1
        resp_col = (st.response_media_columns or st.response_columns)[1]
        assert media_id(chosen_media[0]) == media_id(ds[1][resp_col])
        check_decoded(decode_media(ex, f"chosen_{out_mod}s")[0], out_mod)
    if in_mod == "image":  # TRL reads PIL images from `images`
        assert isinstance(ex["images"][0], Image.Image)
    elif in_mod:
        assert Path(ex[f"{in_mod}s"][0]["path"]).exists()

    rew = data.to_reward_pairs(ds, dimension="safety")
    assert len(rew) == 4 and "prompt" not in rew.column_names
    s_col = st.preferred_column(st.dimension("safety"))
    for j in range(4):
        conv = rew[j]["chosen"]
        assert [m["role"] for m in conv] == ["user", "assistant"]
        if st.text_output:
            want = f"answer {ds[j][s_col]} to prompt {j}"
            got = conv[1]["content"] if name == "t2t" else conv[1]["content"][0]["text"]
            assert got == want

    sft = data.to_sft(ds)
    assert len(sft) == 4 and {"prompt", "completion"} <= set(sft.column_names)
    n_media = (1 if in_mod else 0) + (1 if out_mod else 0)
    if n_media:
        mods = [m for m in dict.fromkeys([in_mod, out_mod]) if m]
        assert sum(len(sft[0][f"{m}s"]) for m in mods) == n_media

    fb = data.to_feedback_sft(ds)
    assert len(fb) == 8 and fb.aa_report.dropped == []
    ex = fb[3]  # row 1, response 2
    assert [m["role"] for m in ex["prompt"]] == ["user", "assistant", "user"]
    request = ex["prompt"][2]["content"] if name == "t2t" else ex["prompt"][2]["content"][0]["text"]
    audio = "audio" in st.inputs + st.outputs
    assert request == (data.CRITIQUE_REQUEST_AUDIO if audio else data.CRITIQUE_REQUEST)
    crit = ex["completion"][0]["content"]
    crit = crit if name == "t2t" else crit[0]["text"]
    assert crit == "##Critique: weak point 2. ##Refinement: fix 2."

    prompts = data.to_prompts(ds.select([0, 1, 0, 2]))
    assert len(prompts) == 3 and prompts.aa_report.dropped == [(2, st.prompt_column, "duplicate prompt")]


def media_id(value):
    if isinstance(value, Image.Image):
        return np.asarray(value).tobytes()
    return value["path"] or value["bytes"]


def check_decoded(value, modality):
    if modality == "image":
        assert isinstance(value, Image.Image) and value.size == (32, 32)
    elif modality == "audio":
        assert value.dtype == np.float32 and value.ndim == 1 and len(value) == 1600
    else:
        assert value.dtype == np.uint8 and value.shape == (4, 32, 32, 3)


# ----------------------------------------------------------------------------- bad inputs
def _set(row_idx, column, value):
    def mutate(rows, root):
        rows[row_idx][column] = value(root) if callable(value) else value
    return mutate


def _drop_column(column):
    def mutate(rows, root):
        for r in rows:
            del r[column]
    return mutate


def _garbage_file(rel: str):
    def make(root):
        write_bytes_atomic(root / rel, b"definitely not a media file" * 10)
        return rel
    return make


def _outside(root):
    write_bytes_atomic(root.parent / "outside.png", encode_png(np.zeros((4, 4, 3), np.uint8)))
    return "../outside.png"


# (subtask, mutation, expected row, expected column, words the reason holds)
BAD = {
    "missing_column": ("ti2t", _drop_column("question"), None, "question", "missing required column"),
    "missing_overall_column": ("t2i", _drop_column("overall_image"), None, "overall_image", "missing required column"),
    "prompt_wrong_type": ("ti2t", _set(2, "question", 5), 2, "question", "wrong type"),
    "prompt_none": ("t2t", _set(1, "question", None), 1, "question", "missing value"),
    "empty_prompt": ("ti2t", _set(2, "question", "   "), 2, "question", "empty prompt"),
    "response_missing": ("t2t", _set(0, "response_2", None), 0, "response_2", "missing value"),
    "response_wrong_type": ("ta2t", _set(3, "response_1", ["a", "b"]), 3, "response_1", "wrong type"),
    "score_too_high": ("ti2t", _set(1, "clarity_rate_2", 7), 1, "clarity_rate_2", "score outside 0-3"),
    "score_negative": ("t2a", _set(2, "audio_quality_rate_1", -1), 2, "audio_quality_rate_1", "score outside 0-3"),
    "score_not_integer": ("ti2t", _set(3, "safety_rate_1", 1.5), 3, "safety_rate_1", "wrong type"),
    "score_string": ("ti2t", _set(0, "safety_rate_1", "high"), 0, "safety_rate_1", "wrong type"),
    "overall_not_1_or_2": ("ti2t", _set(3, "overall_response", 3), 3, "overall_response", "preferred id not 1 or 2"),
    "overall_missing": ("tv2t", _set(1, "overall_response", None), 1, "overall_response", "missing value"),
    "dimension_choice_0": ("t2v", _set(2, "a_video", 0), 2, "a_video", "preferred id not 1 or 2"),
    "rationale_wrong_type": ("ti2t", _set(1, "p_rationale_1", 3), 1, "p_rationale_1", "wrong type"),
    "missing_image_file": ("ti2t", _set(1, "image", "img/nope.png"), 1, "image", "missing media file"),
    "missing_response_image": ("t2i", _set(2, "image_2", "img/nope.png"), 2, "image_2", "missing media file"),
    "corrupt_image": ("ti2t", _set(2, "image", _garbage_file("img/bad.png")), 2, "image", "corrupt image"),
    "corrupt_ti2ti_answer_image": ("ti2ti", _set(0, "image_1", _garbage_file("img/bad.png")), 0, "image_1",
                                   "corrupt image"),
    "corrupt_audio": ("ta2t", _set(1, "audio_path", _garbage_file("aud/bad.wav")), 1, "audio_path", "corrupt audio"),
    "corrupt_response_audio": ("t2a", _set(3, "response_2", _garbage_file("aud/bad.wav")), 3, "response_2",
                               "corrupt audio"),
    "corrupt_video": ("tv2t", _set(2, "video_path", _garbage_file("vid/bad.mp4")), 2, "video_path", "corrupt video"),
    "empty_frames_folder": ("tv2t", _set(1, "video_path", lambda root: (root / "vid/empty").mkdir() or "vid/empty"),
                            1, "video_path", "corrupt video"),
    "path_escapes_root": ("ti2t", _set(3, "image", _outside), 3, "image", "escapes"),
    "media_wrong_type": ("ti2t", _set(0, "image", 12), 0, "image", "wrong type"),
    "missing_media_value": ("ta2t", _set(2, "audio_path", None), 2, "audio_path", "missing value"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_row_and_column(tmp_path, case):
    name, mutate, row, column, words = BAD[case]
    root = tmp_path / "data"
    rows = make_rows(name, root)
    mutate(rows, root)
    with pytest.raises(DataError) as err:
        load(write_jsonl(root / "d.jsonl", rows), name)
    e = err.value
    assert isinstance(e, ValueError)
    assert (e.row, e.column) == (row, column), str(e)
    assert words in e.reason and column in str(e) and (row is None or f"row {row}" in str(e))


def test_in_memory_bad_values(tmp_path):
    rows = make_rows("ti2t", tmp_path)
    rows[1]["image"] = b"\x89PNG broken bytes"
    with pytest.raises(DataError, match="row 1, column 'image': corrupt image"):
        load(rows, "ti2t", media_root=tmp_path)
    rows = make_rows("ta2t", tmp_path)
    rows[2]["audio_path"] = {"bytes": b"RIFF not really a wav", "path": None}
    with pytest.raises(DataError, match="row 2, column 'audio_path': corrupt audio"):
        load(rows, "ta2t", media_root=tmp_path)
    rows = make_rows("tv2t", tmp_path)
    rows[0]["video_path"] = {"frames": np.zeros((2, 8, 8, 3), np.uint8), "fps": 4, "path": None}
    with pytest.raises(DataError, match="row 0, column 'video_path': wrong type.*written to a file"):
        load(rows, "tv2t", media_root=tmp_path)
    rows = make_rows("ti2t", tmp_path)
    rows[3]["mini_meta"] = 3  # mixed types in an extra column: named, not a raw Arrow error
    with pytest.raises(DataError, match="mini_meta"):
        load(rows, "ti2t", media_root=tmp_path)


def test_skip_mode_drops_and_reports(tmp_path):
    rows = make_rows("ti2t", tmp_path, n=8)
    rows[1]["clarity_rate_1"] = 9
    rows[4]["image"] = "img/nope.png"
    rows[6]["question"] = ""
    rows[6]["overall_response"] = 0  # a second problem in the same row: the row is dropped once
    with pytest.warns(DataWarning, match="skipped 3 bad rows of 8"):
        ds = load(write_jsonl(tmp_path / "d.jsonl", rows), "ti2t", on_error="skip")
    assert [json.loads(m)["i"] for m in ds["mini_meta"]] == [0, 2, 3, 5, 7]
    rep = ds.aa_report
    assert (rep.rows_in, rep.rows_out) == (8, 5)
    assert [(r, c) for r, c, _ in rep.dropped] == [(1, "clarity_rate_1"), (4, "image"), (6, "question")]
    assert rep.counts() == {"clarity_rate_1: score outside 0-3": 1, "image: missing media file": 1,
                            "question: empty prompt": 1}
    assert "8 rows in, 5 out" in str(rep)
    with pytest.raises(DataError, match="missing required column"):  # schema errors raise even when skipping
        load([{k: v for k, v in r.items() if k != "image"} for r in rows], "ti2t", on_error="skip")


# ----------------------------------------------------------------------------- sources and formats
def _text_view(ds):
    refs = ds.with_format("arrow")[:].column("image").to_pylist()
    return ds.remove_columns(["image"]).to_list(), [Path(r["path"]).resolve() for r in refs]


def test_every_source_kind_loads_the_same(tmp_path):
    rows = make_rows("ti2t", tmp_path, n=6)
    want = _text_view(load(write_jsonl(tmp_path / "d.jsonl", rows), "ti2t"))
    (tmp_path / "list.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "val": datasets.Dataset.from_list(rows[:2])}).save_to_disk(str(tmp_path / "saved"))
    hub = tmp_path / "hub" / "text-image-to-text"  # a hub-snapshot-like folder of data files
    hub.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:3]), hub / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[3:]), hub / "train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:1]), hub / "val-00000-of-00001.parquet")
    sources = {
        "json": (tmp_path / "list.json", {}),
        "parquet": (tmp_path / "d.parquet", {}),
        "save_to_disk": (tmp_path / "saved", {"split": "train", "media_root": tmp_path}),
        "data_folder": (tmp_path / "hub", {"split": "train", "media_root": tmp_path}),
        "dataset": (datasets.Dataset.from_list(rows), {"media_root": tmp_path}),
        "list": (rows, {"media_root": tmp_path}),
    }
    for kind, (source, kw) in sources.items():
        assert _text_view(load(source, "ti2t", **kw)) == want, kind
    with pytest.raises(DataError, match="pass split="):
        load(tmp_path / "saved", "ti2t", media_root=tmp_path)
    assert len(load(tmp_path / "saved", "ti2t", media_root=tmp_path, split="val")) == 2
    # relative paths resolve under the source's folder by default: the folder holds no img/
    with pytest.raises(DataError, match="missing media file"):
        load(tmp_path / "saved", "ti2t", split="train")
    # a normalized Dataset survives save_to_disk (datasets embeds the image files) and loads again as it is
    ds = load(rows, "ti2t", media_root=tmp_path)
    ds.save_to_disk(str(tmp_path / "normalized"))
    again = load(tmp_path / "normalized", "ti2t")
    assert _text_view(again)[0] == want[0] and again.features == ds.features
    assert [im.getpixel((5, 5)) for im in again["image"]] == [COLORS[i % 3] for i in range(6)]


def test_embedded_media_stay_bytes(tmp_path):
    """Hub-style rows embed media: PIL / bytes images, {"array", "sampling_rate"} audio."""
    rows = make_rows("ti2t", tmp_path, n=3)
    rows[0]["image"] = Image.new("RGB", (32, 32), (9, 8, 7))
    rows[1]["image"] = np.full((32, 32, 3), 200, np.uint8)
    rows[2]["image"] = {"bytes": (tmp_path / "img/1.png").read_bytes(), "path": "1.png"}
    ds = load(datasets.Dataset.from_list(rows[2:]).cast_column("image", datasets.Image()), "ti2t")
    assert decode_media(ds[0], "image").getpixel((0, 0)) == COLORS[1]
    ds = load(rows, "ti2t")
    assert ds[0]["image"].getpixel((3, 3)) == (9, 8, 7) and ds[1]["image"].getpixel((0, 0)) == (200, 200, 200)
    refs = ds.with_format("arrow")[:].column("image").to_pylist()
    assert all(r["bytes"] for r in refs)

    rows = make_rows("ta2t", tmp_path, n=2)
    rows[0]["audio_path"] = {"array": np.ones(800, np.float32) * 0.25, "sampling_rate": 8000}
    ds = load(rows, "ta2t", media_root=tmp_path)
    wave = decode_media(ds[0], "audio_path")
    assert wave.dtype == np.float32 and len(wave) == 1600 and abs(float(wave.mean()) - 0.25) < 1e-3
    wave = decode_media(ds[1], "audio_path", target_rate=8000)
    assert len(wave) == 800
    pref = data.to_preference(ds)
    assert pref[0]["audios"][0]["bytes"] is not None


def test_decode_media_video_and_errors(tmp_path):
    ds = load(make_rows("tv2t", tmp_path, n=3), "tv2t", media_root=tmp_path)
    mp4, frames = decode_media(ds[0], "video_path"), decode_media(ds[1], "video_path", num_frames=2)
    assert mp4.shape == (4, 32, 32, 3) and frames.shape == (2, 32, 32, 3)
    assert abs(int(mp4[3, 0, 31, 0]) - 200) < 8 and int(mp4[0, 0, 31, 0]) < 8  # frames in order: bar grows
    with pytest.raises(DataError, match="modality"):
        decode_media({"response_1": "x.wav"}, "response_1")
    t2a = load(make_rows("t2a", tmp_path, n=1), "t2a", media_root=tmp_path)
    assert decode_media(t2a[0], "response_1", subtask="t2a").ndim == 1
    with pytest.raises(DataError, match="column 'image'.*not found"):
        decode_media({"image": {"bytes": None, "path": str(tmp_path / "gone.png")}}, "image")


def test_each_distinct_file_decoded_once(tmp_path, monkeypatch):
    calls = []
    real = data.load_image
    monkeypatch.setattr(data, "load_image", lambda v, *a, **k: calls.append(v) or real(v, *a, **k))
    rows = make_rows("ti2ti", tmp_path, n=12)  # 3 distinct images, in 3 columns
    load(rows, "ti2ti", media_root=tmp_path, num_proc=2)
    assert len(calls) == 3


def test_check_media_levels(tmp_path):
    rows = make_rows("ti2t", tmp_path)
    rows[1]["image"] = _garbage_file("img/bad.png")(tmp_path)
    assert len(load(rows, "ti2t", media_root=tmp_path, check_media="exists")) == 4
    rows[2]["image"] = "img/nope.png"
    assert len(load(rows, "ti2t", media_root=tmp_path, check_media="off")) == 4
    with pytest.raises(DataError, match="row 2.*missing media file"):
        load(rows, "ti2t", media_root=tmp_path, check_media="exists")


def test_column_map(tmp_path):
    rows = make_rows("t2i", tmp_path)
    their = {"prompt": "caption", "image_1": "img_a"}
    renamed = [{their.get(k, k): v for k, v in r.items()} for r in rows]
    with pytest.raises(DataError, match="missing required column 'prompt'"):
        load(renamed, "t2i", media_root=tmp_path)
    ds = load(renamed, "t2i", media_root=tmp_path, column_map={"caption": "prompt", "img_a": "image_1"})
    assert ds["prompt"] == [r["prompt"] for r in rows]
    with pytest.raises(DataError, match="column_map names a column the source lacks"):
        load(renamed, "t2i", media_root=tmp_path, column_map={"nope": "prompt"})


def test_safe_rlhf_format(tmp_path):
    rows = [{"prompt": f"how do I {i}?", "response_0": f"r0 {i}", "response_1": f"r1 {i}",
             "prompt_source": "x", "response_0_source": "alpaca-7b", "response_1_source": "alpaca-13b",
             "is_response_0_safe": i % 2 == 0, "is_response_1_safe": True,
             "better_response_id": i % 2, "safer_response_id": 1 - i % 2} for i in range(4)]
    ds = load(write_jsonl(tmp_path / "s.jsonl", rows), "t2t")
    assert ds["question"][1] == "how do I 1?" and ds["response_1"][1] == "r0 1" and ds["response_2"][1] == "r1 1"
    assert ds["overall_response"] == [1, 2, 1, 2] and ds["s_response"] == [2, 1, 2, 1]
    assert ds["res_1_from"][0] == "alpaca-7b" and ds["is_response_0_safe"] == [True, False, True, False]
    assert ds["p_response"] == [None] * 4 and ds["safety_rate_1"] == [None] * 4  # SafeRLHF has no scores
    safer = data.to_preference(ds, dimension="s")
    assert safer[0]["chosen"][0]["content"] == "r1 0" and safer[1]["chosen"][0]["content"] == "r0 1"
    none = data.to_preference(ds, dimension="clarity")
    assert len(none) == 0 and none.aa_report.counts() == {"c_response: no preference label": 4}
    rows[2]["better_response_id"] = 2
    with pytest.raises(DataError, match="row 2, column 'better_response_id'"):
        load(rows, "t2t")
    with pytest.raises(DataError, match="text responses"):
        load(rows[:2], "t2i")


def test_trl_formats(tmp_path):
    std = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(3)]
    ds = load(std, "t2t")
    assert ds["response_1"] == ["good 0", "good 1", "good 2"] and ds["overall_response"] == [1, 1, 1]
    assert data.to_preference(ds)[2]["rejected"] == [{"role": "assistant", "content": "bad 2"}]

    img = str(tmp_path / "img/0.png")
    make_media(tmp_path)
    conv = [{"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"what is {i}?"}]}],
             "chosen": [{"role": "assistant", "content": [{"type": "text", "text": f"a {i}"}]}],
             "rejected": [{"role": "assistant", "content": f"b {i}"}],
             "images": [img]} for i in range(3)]
    ds = load(datasets.Dataset.from_list(conv), "ti2t")
    assert ds["question"] == ["what is 0?", "what is 1?", "what is 2?"] and ds["response_2"][0] == "b 0"
    pref = data.to_preference(ds)
    assert pref[0]["images"][0].size == (32, 32) and pref[0]["rejected"][0]["content"][0]["text"] == "b 0"

    implicit = [{"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                 "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]}]
    ds = load(implicit, "t2t")
    assert (ds[0]["question"], ds[0]["response_1"], ds[0]["response_2"]) == ("hi", "hello", "go away")

    conv[1]["images"] = [img, img]
    with pytest.raises(DataError, match="row 1, column 'images'"):
        load(conv, "ti2t")
    std[1]["chosen"] = 7
    with pytest.raises(DataError, match="row 1, column 'chosen': wrong type"):
        load(std, "t2t")
    with pytest.raises(DataError, match="missing required column 'question'"):
        load(std, "t2t", fmt="align_anything")


def test_conversion_drops_equal_pairs(tmp_path):
    rows = make_rows("ti2t", tmp_path)
    rows[2]["response_2"] = rows[2]["response_1"]
    ds = load(rows, "ti2t", media_root=tmp_path)
    pref = data.to_preference(ds)
    assert len(pref) == 3 and pref.aa_report.dropped == [(2, "response_1", "chosen equals rejected")]
    assert len(data.to_sft(ds)) == 4  # equal responses still make a valid SFT example
    rows[3]["text_critique_1"] = None
    fb = data.to_feedback_sft(load(rows, "ti2t", media_root=tmp_path))
    assert len(fb) == 7 and fb.aa_report.dropped == [(3, "text_critique_1", "no critique")]
    with pytest.raises(ValueError, match="subtask"):
        data.to_preference(datasets.Dataset.from_list(rows))


@pytest.mark.parametrize("name,fmt", [("ti2t", "parquet"), ("tv2t", "jsonl")])
def test_loads_align_anything_mini(tmp_path, name, fmt):
    """The mini generator's files (media under relative paths, parquet images as HF structs) load as written."""
    from aa_lib.mini.build import write

    ds = load(write(name, tmp_path, fmt=fmt, n=3, seed=0), name)
    st = get_subtask(name)
    assert len(ds) == 3 and "mini_meta" in ds.column_names
    assert json.loads(ds[0]["mini_meta"])["subtask"] == name
    check = decode_media(ds[0], st.media_column)
    assert isinstance(check, Image.Image) if name == "ti2t" else check.ndim == 4
