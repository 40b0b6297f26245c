"""A paper-profile input set written from the mini world, in the real layouts, for a rehearsal on any CPU:

    python -m aa_lib.rehearsal DIR [--size smoke|default]
    python -m aa_lib.runs policy llf_main llf_ablation llf_feedback_fraction table2_main_results \
        table3_feedback_ablation fig5_feedback_fraction --profile paper --inputs DIR/paths.yaml \
        --figures-dir DIR/figures

Per subtask (ti2t, tv2t, ta2t, t2i, ti2ti, and t2t with a real pretrained LM): align-anything-200k-style training
files (`data/<subtask>/train.parquet`: ti2t / t2i with their image bytes in the file, tv2t / ta2t with `video_path`
/ `audio_path` relative to a media root), the Table 2 benchmark files in the layouts `aa_lib.benchmarks` reads
(LLaVA-Bench, MIA-Bench, Video-ChatGPT, AIR-Bench, ImageReward and HPS v2 prompt files, InterleavedBench) made from
held-out mini prompts, local checkpoint folders (the tiny initial policies in place of the 7B ones;
SmolLM2-135M-Instruct for t2t), and `paths.yaml`. The judge is the mini rubric answering in each benchmark's format
(`benchmarks.mini_bench_judge`; for t2i a scorer plug-in, `mini_image_scorer`), reading each item's hidden truth
from `truth.jsonl`: the rehearsal checks that everything runs, its tables are a rehearsal, not results."""
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
SUBTASKS = ("ti2t", "tv2t", "ta2t", "t2i", "ti2ti", "t2t")
BENCHMARKS = {"ti2t": ("llava", "mia"), "tv2t": ("video_chatgpt",), "ta2t": ("air",), "t2i": ("imagereward",),
              "ti2ti": ("interleaved",)}


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


def write_benchmark(name: str, n: int, out: Path, seed: int = 1) -> dict:
    """`n` held-out mini prompts as the files of one Table 2 benchmark; returns its `benchmarks` entry."""
    if name == "imagereward":  # ImageReward's prompt objects and HPS v2's plain list, scored by the mini rubric
        rows = mini.heldout_prompts("t2i", n, seed)
        col = get_subtask("t2i").prompt_column
        truth = _jsonl(out / "truth.jsonl", [{col: r[col], "mini_meta": r["mini_meta"]} for r in rows])
        write_text_atomic(out / "imagereward.json", json.dumps([{"prompt": r[col]} for r in rows]))
        write_text_atomic(out / "hpsv2.json", json.dumps([r[col] for r in rows]))
        scorer = {"scorer": "aa_lib.rehearsal:mini_image_scorer", "weights": truth}
        return {"imagereward": {"path": str(out / "imagereward.json"), **scorer},
                "hpsv2": {"path": str(out / "hpsv2.json"), **scorer}}
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
        ids, key = [it.id for it in items], "llava_bench"
    elif name == "mia":
        path = out / "instruction_benchmark_all.json"
        write_text_atomic(path, json.dumps([{"image": f, "instruction": it.question, "type": it.category,
                                             "components": it.extra["components"],
                                             "component_weight": it.extra["weights"]} for it, f in zip(items, files)]))
        # MIA-Bench names its images by URL; the loader looks their file names up in image_dir.
        image_dir = str(Path(items[0].media[0]).parent)
        args, ids, key = {"path": str(path), "image_dir": image_dir}, [str(i) for i in range(len(items))], "mia_bench"
    elif name == "interleaved":
        path = _jsonl(out / "interleaved.jsonl", [{"id": it.id, "instruction": it.question, "input_images": [f],
                                                   "reference": it.reference} for it, f in zip(items, files)])
        args, ids, key = {"path": path, "image_dir": str(media)}, [it.id for it in items], "interleaved_bench"
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


def mini_image_scorer(truth_path):
    """The rehearsal's ImageReward / HPS v2 plug-in: the mini rubric's t2i score of each image, its prompt's hidden
    truth read from `truth_path` (`benchmarks.MiniImageScorer`)."""
    from aa_lib.records import read_jsonl

    return B.MiniImageScorer(list(read_jsonl(Path(truth_path))))


def write_policy(subtask: str, out: Path, size: str) -> str:
    """The initial policy: SmolLM2-135M-Instruct for t2t (a real pretrained instruct LM from its GGUF), else the
    tiny policy trained as the `policy` notebook trains it (smoke: a few steps)."""
    if subtask == "t2t":
        from aa_lib.models import gguf_to_folder, smollm2_gguf

        return str(gguf_to_folder(smollm2_gguf(), out))
    sizes = E.experiment_sizes(size == "smoke", None, subtask)
    return E.train_policy(subtask, out, 0, sizes)["policy"]


def _relative(value, root: Path):
    """Paths under `root` written relative to it (the YAML is read against its folder): the set can be moved."""
    if isinstance(value, dict):
        return {k: _relative(v, root) for k, v in value.items()}
    return str(Path(value).relative_to(root)) if Path(value).is_absolute() else value


def write_labels(subtasks, n: int, out: Path, seed: int = 0) -> dict:
    """Annotation-study files of the other paper-profile specs, from the mini world's simulated annotators: the
    agreement study's labels (Table 1) and the human-AI agreement per dimension (Fig. 13), as CSV."""
    import pandas as pd

    rows = {s: mini.generate(s, n, seed=seed) for s in subtasks}
    out.mkdir(parents=True, exist_ok=True)
    labels = mini.label_study(rows, n_groups=2, n_annotators=3, n_pairs=n // 2, seed=seed)
    labels.to_csv(out / "agreement.csv", index=False)
    human_ai = pd.concat([mini.human_ai_agreement(r, n_annotators=3, seed=seed) for r in rows.values()])
    human_ai.to_csv(out / "human_ai_agreement.csv", index=False)
    return {"agreement": {"labels_path": str(out / "agreement.csv")},
            "human_ai_agreement": {"labels_path": str(out / "human_ai_agreement.csv")}}


def write_inputs(root, size: str = "smoke", subtasks=SUBTASKS) -> Path:
    """The whole input set under `root`; returns the paths YAML. Parts already written are kept (rerun-safe)."""
    root = Path(root).resolve()
    n = SIZES[size]
    entries = {}
    for st in subtasks:
        entry = write_data(st, n["rows"], root / "data" / st)
        model_dir = root / "models" / st
        done = model_dir / ("config.json" if st == "t2t" else "policy/config.json")
        entry["policy"] = str(done.parent) if done.exists() else write_policy(st, model_dir, size)
        if st in BENCHMARKS:
            entry["benchmarks"] = {k: v for b in BENCHMARKS[st]
                                   for k, v in write_benchmark(b, n["items"], root / "benchmarks" / b).items()}
        entries[st] = _relative(entry, root)
    parameters = write_labels(subtasks, n["rows"], root / "labels")
    parameters["data_composition"] = {"paper_data": {st: e["data"] for st, e in entries.items()},
                                      "media_roots": {st: e["media_root"] for st, e in entries.items()
                                                      if "media_root" in e}}
    paths = root / "paths.yaml"
    write_text_atomic(paths, "# A rehearsal input set (aa_lib.rehearsal): a rehearsal, not results.\n"
                      + yaml.safe_dump({"judge": {"kind": "mini_rubric"}, "subtasks": entries,
                                        "parameters": _relative(parameters, root)}, sort_keys=False))
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aa_lib.rehearsal", description=__doc__.split("\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--size", choices=sorted(SIZES), default="default")
    ap.add_argument("--subtasks", nargs="*", default=list(SUBTASKS))
    args = ap.parse_args(argv)
    print(write_inputs(args.root, args.size, args.subtasks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
