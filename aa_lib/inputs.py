"""What an LLF cell starts from: the initial policy, the preference data and the evaluator (profile `paper`).

At profile tiny a cell builds its policy from config, draws mini rows and scores with the mini rubric. At profile
paper the user names, per subtask, a checkpoint (HF folder or .gguf: aligned as it is, no SFT), align-anything-200k
files (`aa_lib.data.load`) and the subtask's Table 2 benchmarks with a judge, in one YAML file given to the runner
(`python -m aa_lib.runs all --profile paper --inputs paths.yaml`):

    judge: {kind: http, base_url: http://127.0.0.1:8000/v1, model: gpt-4o}   # or {kind: hf, path: ...}
    subtasks:
      ti2t:
        policy: models/llava-1.5-7b-hf
        data: data/text-image-to-text            # file or folder; media_root / column_map as data.load takes them
        benchmarks:                               # each entry: the loader's own arguments (aa_lib.benchmarks)
          llava_bench: {questions: llava/questions.jsonl, answers: llava/answers_gpt4.jsonl, image_dir: llava/images}
          mia_bench: {path: mia/instruction_benchmark_all.json, image_dir: mia/images}

    parameters:                                   # other specs' paper parameters; names ending in _path, _paths,
      agreement: {labels_path: labels/agreement.csv}   # _dir, _root(s) or _data hold paths
      data_composition: {paper_data: {ti2t: data/text-image-to-text}}

Relative paths are read against the YAML's folder; every path is checked when the file is read, before any run
starts, and a missing one is named by its key (`subtasks.ti2t.benchmarks.llava_bench.questions`). The runner hands
each run its subtask's entry as the notebook parameter `inputs`, and each spec's `parameters` to its runs.
"""
from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from aa_lib import benchmarks as B
from aa_lib.judges import HFJudge, HTTPJudge
from aa_lib.media import encode_png, write_bytes_atomic
from aa_lib.records import read_jsonl
from aa_lib.subtasks import get_subtask

# Table 2's benchmarks (SPEC §6): subtask, loader, how a (item, response) becomes judge requests, the score.
BENCHMARKS = {
    "llava_bench": ("ti2t", B.load_llava_bench), "mia_bench": ("ti2t", B.load_mia_bench),
    "video_chatgpt": ("tv2t", B.load_video_chatgpt), "air_bench": ("ta2t", B.load_air_bench_chat),
    "imagereward": ("t2i", B.load_image_prompts), "hpsv2": ("t2i", B.load_image_prompts),
    "interleaved_bench": ("ti2ti", B.load_interleaved_bench),
}
# The mini judge's name for each benchmark it can answer (`benchmarks.mini_bench_judge`).
MINI_JUDGED = {"llava_bench": "llava", "mia_bench": "mia", "video_chatgpt": "video_chatgpt", "air_bench": "air",
               "interleaved_bench": "interleaved"}
_NOT_PATHS = {"kind", "base_url", "model", "api_key_env", "column_map", "video_ext", "check_files", "scorer",
              "max_workers"}
# The keys of a benchmark entry that its loader does not take.
_NOT_LOADER_ARGS = ("scorer", "weights", "max_workers", "truth")


@dataclass
class Inputs:
    """One subtask's entry of the paths YAML (empty at profile tiny: the mini world)."""

    policy: str | None = None  # checkpoint folder or .gguf file; None: the tiny policy built and trained here
    data: str | None = None  # align-anything-200k file or folder; None: mini rows
    media_root: str | None = None
    column_map: dict | None = None
    benchmarks: dict = field(default_factory=dict)  # name -> loader arguments; empty: the mini rubric
    judge: dict | None = None

    @classmethod
    def of(cls, params: dict | None) -> Inputs:
        unknown = set(params or {}) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"inputs: unknown keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**(params or {}))


def _resolve(value, key: str, base: Path):
    """Paths under `value` made absolute against `base` and checked; keys in _NOT_PATHS are left as they are."""
    if isinstance(value, dict):
        return {k: v if k in _NOT_PATHS else _resolve(v, f"{key}.{k}", base) for k, v in value.items()}
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a path, got {value!r}")
    path = (base / value).resolve()
    if not path.exists():
        raise FileNotFoundError(f"{key}: {path} does not exist")
    return str(path)


def read_paths(path) -> dict[str, dict]:
    """{subtask: `Inputs` fields} from a paths YAML, every path absolute and checked (see the module docstring)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the paths file: {e}") from e
    where = f"{path}:"
    if set(raw) - {"judge", "subtasks", "parameters"} or not isinstance(raw.get("subtasks"), dict):
        raise ValueError(f"{where} expected `subtasks: {{name: entry}}`, optionally `judge` and `parameters`; "
                         f"got {sorted(raw)}")
    judge = _resolve(raw["judge"], f"{where} judge", path.parent) if raw.get("judge") else None
    out = {}
    for subtask, entry in raw["subtasks"].items():
        entry = dict(entry or {})
        for name in entry.get("benchmarks") or {}:
            if name not in BENCHMARKS or BENCHMARKS[name][0] != subtask:
                raise ValueError(f"{where} subtasks.{subtask}.benchmarks.{name}: not a Table 2 benchmark of "
                                 f"{subtask} (those: {[b for b, v in BENCHMARKS.items() if v[0] == subtask]})")
        Inputs.of(entry)  # unknown keys fail here, named
        out[subtask] = {**_resolve(entry, f"{where} subtasks.{subtask}", path.parent), "judge": judge}
    return out


_PATH_SUFFIXES = ("_path", "_paths", "_dir", "_root", "_roots", "_data")


def read_parameters(path) -> dict[str, dict]:
    """{spec: notebook parameters} from the paths YAML's `parameters` section, the path-valued ones (by name:
    `_PATH_SUFFIXES`) absolute and checked like the subtasks' entries."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    out = {}
    for spec, params in (raw.get("parameters") or {}).items():
        key = f"{path}: parameters.{spec}"
        out[spec] = {k: _resolve(v, f"{key}.{k}", path.parent) if k.endswith(_PATH_SUFFIXES) else v
                     for k, v in (params or {}).items()}
    return out


# ---------------------------------------------------------------------------------------------------- judging
def make_judge(spec: dict | None, cache_dir, benchmark: str | None = None):
    """The judge a paths YAML names: `http` (an OpenAI-compatible endpoint: base_url, model, api_key_env), `hf` (a
    local causal LM: path) or `mini_rubric` (the rehearsal's: the mini rubric, answering in each benchmark's format,
    reading each item's hidden truth from the benchmark entry's `truth` file). Replies are cached in `cache_dir`, so
    a rerun makes no calls."""
    kind = (spec or {}).get("kind")
    if kind == "http":
        key = os.environ.get(spec.get("api_key_env") or "OPENAI_API_KEY", "none")
        return HTTPJudge(spec["base_url"], spec["model"], api_key=key, cache_dir=cache_dir)
    if kind == "hf":
        return HFJudge(spec["path"], cache_dir=cache_dir)
    if kind == "mini_rubric":
        if benchmark not in MINI_JUDGED:
            raise ValueError(f"the mini_rubric judge answers {sorted(MINI_JUDGED)}, not {benchmark!r}")
        return B.mini_bench_judge(MINI_JUDGED[benchmark])
    raise ValueError(f"judge: kind must be http, hf or mini_rubric, got {spec!r}")


def load_scorer(spec: dict):
    """An ImageReward / HPS v2 scorer plug-in: `scorer: "package.module:function"` called with the entry's `weights`
    path returns an object with `score(prompts, images) -> floats` (`benchmarks.ImageScorer`; the user's own
    ImageReward / HPS v2 packages wrap through `benchmarks.load_image_scorer`)."""
    if not spec.get("scorer"):
        raise ValueError("an imagereward / hpsv2 entry needs `scorer: package.module:function` (and `weights`)")
    module, _, name = spec["scorer"].partition(":")
    return getattr(importlib.import_module(module), name)(spec.get("weights"))


def _prompt_example(subtask: str, item) -> dict:
    """A benchmark item's (or a bare prompt string's) generation prompt in `data.to_sft`'s layout (the media first,
    then the question), as the subtask's policy family takes it (`prompt_example`)."""
    from aa_lib.policies import policy_for

    question, media = (item, ()) if isinstance(item, str) else (item.question, item.media)
    st = get_subtask(subtask)
    kinds = [m for m in st.inputs if m != "text"]
    if not kinds and st.text_output:
        return {"prompt": [{"role": "user", "content": question}]}
    content = [{"type": kinds[0], "text": None} for _ in media] + [{"type": "text", "text": question}]
    example = {"prompt": [{"role": "user", "content": content}]}
    if kinds:
        example[f"{kinds[0]}s"] = [{"bytes": None, "path": m} for m in media]
    return policy_for(subtask).prompt_example(example)


class BenchmarkHeldOut:
    """The paper profile's held-out prompts: the items of the subtask's Table 2 benchmarks, scored by their
    protocols with the named judge; `score` is the first benchmark's number, `benchmarks` all of them, and a
    reply the judge's protocol cannot parse is counted in `failures` (the evaluation goes on)."""

    def __init__(self, subtask: str, inputs: Inputs, cache_dir, n: int | None = None):
        self.subtask, self.inputs, self.cache_dir = subtask, inputs, Path(cache_dir)
        self.items = {}
        for name, args in inputs.benchmarks.items():
            items = BENCHMARKS[name][1](**{k: v for k, v in args.items() if k not in _NOT_LOADER_ARGS})
            items = items[:n] if n else items
            if args.get("truth"):  # the rehearsal's mini judge reads each item's hidden truth
                metas = {str(r["id"]): r["mini_meta"] for r in read_jsonl(Path(args["truth"]))}
                for it in items:
                    it.extra["mini_meta"] = metas[str(it.id)]
            self.items[name] = items
        if not self.items:
            raise ValueError(f"{subtask}: no benchmark named in inputs")
        self.examples = [_prompt_example(subtask, it) for items in self.items.values() for it in items]

    def score(self, responses: list) -> dict:
        out, failures, start = {}, {}, 0
        for name, items in self.items.items():
            resp, start = responses[start:start + len(items)], start + len(items)
            out[name], failures[name] = self._score_one(name, items, resp)
        return {"score": next(iter(out.values())), "benchmarks": out, "failures": failures, "n": len(responses)}

    def _score_one(self, name: str, items, responses) -> tuple[float | None, int]:
        spec = self.inputs.benchmarks[name]
        if name in ("imagereward", "hpsv2"):
            return B.image_preference_score(load_scorer(spec), items, responses)["mean"], 0
        judge = make_judge(self.inputs.judge, self.cache_dir / name, name)
        workers = int(spec.get("max_workers", 1))
        if name == "video_chatgpt":
            dims = [d for d in B.VIDEO_CHATGPT_DIMENSIONS if d != "consistency"]
            res = {d: judge.judge_batch([B.video_chatgpt_request(it, r, d) for it, r in zip(items, responses)],
                                        workers) for d in dims}
            failed = sum(not x.ok for rs in res.values() for x in rs)
            return (B.video_chatgpt_scores(res)["mean"] if failed < len(items) * len(dims) else None), failed
        request, total = {"llava_bench": (B.llava_request, lambda r: B.llava_relative_scores(items, r)["all"]),
                          "mia_bench": (B.mia_request, B.mia_score), "air_bench": (B.air_request, B.air_chat_score),
                          "interleaved_bench": (B.interleaved_request,
                                                lambda r: B.interleaved_scores(r)["overall"])}[name]
        if name == "interleaved_bench":
            responses = [self._interleaved_output(r) for r in responses]
        results = judge.judge_batch([request(it, r) for it, r in zip(items, responses)], workers)
        failed = sum(not r.ok for r in results)
        return (total(results) if failed < len(results) else None), failed

    def _interleaved_output(self, response) -> list[dict]:
        """A ti2ti response {"text", "image"} as InterleavedBench steps, its image a PNG named by its content (the
        judge sees files; the same image is the same file, so a rerun hits the judge's cache)."""
        png = encode_png(np.asarray(response["image"]))
        path = self.cache_dir / "outputs" / f"{hashlib.sha256(png).hexdigest()[:20]}.png"
        if not path.exists():
            write_bytes_atomic(path, png)
        return [{"text": response.get("text") or "", "image": str(path)}]

    @property
    def judge_name(self) -> str:
        """Who decides Table 3's pairs: the rubric on mini items, else the paths YAML's judge (ties half)."""
        judge = self.inputs.judge or {}
        return ("mini.judge_pair" if judge.get("kind") == "mini_rubric" else
                f"{judge.get('kind')}:{judge.get('model') or judge.get('path')}") + " (ties half)"

    def judge_pair(self, i: int, a, b):
        """Table 3's strong judge on example i: 1 or 2 for the better response, "tie" (the LLaVA-Bench review format
        with the two responses as the assistants; the mini judge: the rubric on the item's truth)."""
        name, item = self._item(i)
        if isinstance(item, B.BenchItem) and "mini_meta" in item.extra:
            from aa_lib.mini import judge_pair

            return judge_pair(item.extra["mini_meta"], a, b, self.subtask)
        judge = make_judge(self.inputs.judge, self.cache_dir / "pairs", name)
        ref = B.BenchItem(item.id, item.question, item.media, reference=str(a), extra=item.extra)
        res = judge.judge(B.llava_request(ref, str(b)))
        if not res.ok:
            return "tie"
        return 1 if res.score[0] > res.score[1] else 2 if res.score[1] > res.score[0] else "tie"

    def _item(self, i: int):
        for name, items in self.items.items():
            if i < len(items):
                return name, items[i]
            i -= len(items)
        raise IndexError(i)
