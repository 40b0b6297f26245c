"""A paper-profile input set written from the mini world, in the real layouts, for a rehearsal on any CPU:

    python -m aa_lib.rehearsal DIR [--size smoke|default]
    python -m aa_lib.runs policy llf_main llf_ablation llf_feedback_fraction table2_main_results \
        --profile paper --inputs DIR/paths.yaml --runs-root DIR/runs --figures-dir DIR/figures

Per subtask (ti2t, tv2t, ta2t, and t2t with a real pretrained LM): align-anything-200k-style training files
(`data/<subtask>/train.parquet`: ti2t with its image bytes in the file, tv2t / ta2t with `video_path` / `audio_path`
relative to a media root), the Table 2 benchmark files in the layouts `aa_lib.benchmarks` reads (LLaVA-Bench,
Video-ChatGPT, AIR-Bench) made from held-out mini prompts, local checkpoint folders (the tiny initial policies in
place of the 7B ones; SmolLM2-135M-Instruct for t2t), and `paths.yaml`. The judge is the mini rubric answering in
each benchmark's format (`benchmarks.mini_bench_judge`, reading each item's hidden truth from `truth.jsonl`): the
rehearsal checks that everything runs, its tables are a rehearsal, not results.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import yaml

from aa_lib import benchmarks as B
from aa_lib import experiments as E
from aa_lib import mini
from aa_lib.media import write_text_atomic
from aa_lib.subtasks import get_subtask

SIZES = {"smoke": {"rows": 8, "items": 4}, "default": {"rows": 64, "items": 24}}
BENCHMARK_OF = {"ti2t": "llava", "tv2t": "video_chatgpt", "ta2t": "air"}  # the mini benchmark of each subtask


def write_data(subtask: str, n: int, out: Path, seed: int = 0) -> dict:
    """`n` mini train rows as an align-anything file; returns its `inputs` entry (data, media_root)."""
    st = get_subtask(subtask)
    ds = mini.dataset(subtask, n, seed=seed).remove_columns(["mini_meta"])
    entry = {"data": str(out / "train.parquet")}
    if st.media_column in ("video_path", "audio_path"):  # stored as paths: copied under a media root, relative
        media = out / "media"
        media.mkdir(parents=True, exist_ok=True)
        names = []
        for value in ds[st.media_column]:  # mini stores {"bytes": None, "path": ...}; the real files a plain path
            src = Path(value["path"] if isinstance(value, dict) else value)
            shutil.copy(src, media / src.name)
            names.append(src.name)
        ds = ds.remove_columns([st.media_column]).add_column(st.media_column, names)
        entry["media_root"] = str(media)
    out.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(entry["data"])
    return entry


def _jsonl(path: Path, rows) -> str:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_benchmark(subtask: str, n: int, out: Path, seed: int = 1) -> dict:
    """`n` held-out mini prompts as the subtask's Table 2 benchmark files; returns its `benchmarks` entry."""
    name = BENCHMARK_OF[subtask]
    media = out / "media"
    items = B.mini_bench_items(name, n, seed, media)
    files = [str(Path(it.media[0]).relative_to(media)) for it in items]
    if name == "llava":
        args = {"questions": _jsonl(out / "questions.jsonl", [
                    {"question_id": it.id, "image": f, "text": it.question, "category": it.category}
                    for it, f in zip(items, files)]),
                "answers": _jsonl(out / "answers_gpt4.jsonl", [{"question_id": it.id, "text": it.reference}
                                                               for it in items]),
                "context": _jsonl(out / "context.jsonl", [{"image": f, "caption": [it.extra["context"]]}
                                                          for it, f in zip(items, files)]),
                "image_dir": str(media)}
        ids = [it.id for it in items]
        key = "llava_bench"
    elif name == "video_chatgpt":
        path = out / "generic_qa.json"
        write_text_atomic(path, json.dumps([{"video_name": f, "Q": it.question, "A": it.reference}
                                            for it, f in zip(items, files)]))
        args, ids, key = {"path": str(path), "video_dir": str(media)}, [str(i) for i in range(len(items))], name
    else:
        path = out / "Chat_meta.json"
        write_text_atomic(path, json.dumps([{"uniq_id": it.id, "task_name": "mini", "path": f,
                                             "question": it.question, "answer_gt": it.reference}
                                            for it, f in zip(items, files)]))
        args, ids, key = {"meta": str(path), "audio_dir": str(media)}, [it.id for it in items], "air_bench"
    args["truth"] = _jsonl(out / "truth.jsonl", [{"id": i, "mini_meta": it.extra["mini_meta"]}
                                                 for i, it in zip(ids, items)])
    return {key: args}


def write_policy(subtask: str, out: Path, size: str) -> str:
    """The initial policy: SmolLM2-135M-Instruct for t2t (a real pretrained instruct LM from its GGUF), else the
    tiny policy trained as the `policy` notebook trains it (smoke: a few steps)."""
    if subtask == "t2t":
        from aa_lib.models import gguf_to_folder, smollm2_gguf

        return str(gguf_to_folder(smollm2_gguf(), out))
    sizes = E.experiment_sizes(size == "smoke", None, subtask)
    return E.train_policy(subtask, out, 0, sizes)["policy"]


def write_inputs(root, size: str = "smoke", subtasks=("ti2t", "tv2t", "ta2t", "t2t")) -> Path:
    """The whole input set under `root`; returns the paths YAML. Parts already written are kept (rerun-safe)."""
    root = Path(root).resolve()
    n = SIZES[size]
    entries = {}
    for st in subtasks:
        entry = write_data(st, n["rows"], root / "data" / st)
        model_dir = root / "models" / st
        done = model_dir / ("config.json" if st == "t2t" else "policy/config.json")
        entry["policy"] = str(done.parent) if done.exists() else write_policy(st, model_dir, size)
        if st in BENCHMARK_OF:
            entry["benchmarks"] = write_benchmark(st, n["items"], root / "benchmarks" / st)
        entries[st] = {k: str(Path(v).relative_to(root)) if isinstance(v, str) else
                       {b: {k2: str(Path(v2).relative_to(root)) for k2, v2 in a.items()} for b, a in v.items()}
                       for k, v in entry.items()}
    paths = root / "paths.yaml"
    write_text_atomic(paths, "# A rehearsal input set (aa_lib.rehearsal): a rehearsal, not results.\n"
                      + yaml.safe_dump({"judge": {"kind": "mini_rubric"}, "subtasks": entries}, sort_keys=False))
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aa_lib.rehearsal", description=__doc__.split("\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--size", choices=sorted(SIZES), default="default")
    ap.add_argument("--subtasks", nargs="*", default=["ti2t", "tv2t", "ta2t", "t2t"])
    args = ap.parse_args(argv)
    print(write_inputs(args.root, args.size, args.subtasks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
