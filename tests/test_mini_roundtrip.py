"""align-anything-mini -> files on disk -> aa_lib.data.load preserves every field, and converts to every TRL format."""
from __future__ import annotations

import numpy as np
import pytest

from aa_lib import data, mini
from aa_lib.media import load_audio, load_image, load_video
from aa_lib.subtasks import SUBTASKS, get_subtask

MEDIA = {"image", "image_1", "image_2", "audio_path", "video_path", "video_1", "video_2"}


def _media_columns(st):
    cols = {c for c in st.columns() if c in MEDIA}
    if st.name == "t2a":
        cols |= set(st.response_columns)
    return cols


def _same_media(original: dict, loaded: dict, modality: str):
    """The pixels / samples / frames on disk are those the generator made."""
    raw = mini.media_bytes(original)
    if modality == "image":
        assert np.array_equal(np.asarray(load_image(raw)), np.asarray(data.decode_media({"x": loaded}, "x",
                                                                                         modality="image")))
    elif modality == "audio":
        assert np.allclose(load_audio(raw), data.decode_media({"x": loaded}, "x", modality="audio"), atol=1e-4)
    else:
        frames = original["frames"]
        assert np.abs(load_video(loaded["path"]).astype(int) - frames.astype(int)).max() <= 2  # lossless-ish H.264


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("name", list(SUBTASKS))
def test_roundtrip_preserves_every_field(tmp_path, name, fmt):
    st = get_subtask(name)
    rows = mini.generate(name, 6, seed=3)
    ds = data.load(mini.write(rows, tmp_path, fmt=fmt), name)
    assert len(ds) == len(rows)
    assert ds.column_names == st.columns() + ["mini_meta"]
    media_cols = _media_columns(st)
    for i, (orig, got) in enumerate(zip(rows, ds)):
        for col, value in orig.items():
            if col in media_cols:
                modality = "audio" if col == "audio_path" or name == "t2a" else (
                    "video" if "video" in col else "image")
                _same_media(value, ds.with_format(None).data.column(col)[i].as_py() if modality == "image"
                            else got[col], modality)
            else:
                assert got[col] == value, f"row {i}, column {col}: {got[col]!r} != {value!r}"


@pytest.mark.parametrize("name", list(SUBTASKS))
def test_mini_converts_into_every_trl_format(tmp_path, name):
    st = get_subtask(name)
    ds = mini.dataset(name, 12, seed=1, root=tmp_path)
    media_key = {"image": "images", "audio": "audios", "video": "videos"}
    pref = data.to_preference(ds)
    assert 0 < len(pref) <= len(ds)
    assert {"prompt", "chosen", "rejected"} <= set(pref.column_names)
    for m in st.inputs[1:]:
        assert media_key[m] in pref.column_names and all(len(x) == 1 for x in pref[media_key[m]])
    if not st.text_output:
        assert f"chosen_{media_key[st.outputs[-1]]}" in pref.column_names
    by_dim = data.to_preference(ds, dimension=st.dimensions[0].name)
    assert len(by_dim) > 0
    sft = data.to_sft(ds)
    assert len(sft) == len(ds)
    prompts = data.to_prompts(ds)
    assert 0 < len(prompts) <= len(ds) and "prompt" in prompts.column_names
    if st.text_output:
        rewards = data.to_reward_pairs(ds)
        assert len(rewards) == len(pref)
        fb = data.to_feedback_sft(ds)
        assert len(fb) == 2 * len(ds)
        # the feedback target is the critique, and it carries the refinement
        completion = fb[0]["completion"][0]["content"]
        text = completion if isinstance(completion, str) else completion[0]["text"]
        assert text.startswith("##Critique:") and "##Refinement:" in text
