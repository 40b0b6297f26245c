"""Batch runs of parameterized notebooks with papermill: `python -m aa_lib.runs all` (what `make figures` calls).

A run spec is a YAML file `papermill_runs/<spec>.yaml`:

    notebook: notebooks/agreement.ipynb   # executed with papermill
    needs: [data_composition]             # specs whose results this one reads (run first)
    parameters: {n_pairs: 300}            # injected into the cell tagged `parameters`
    grid: {seed: [0, 1, 2]}               # optional: one run per combination (a list parameter, e.g.
                                          # seeds: [0, 1, 2], is looped inside one run instead)
    profiles: {paper: {parameters: {...}}}  # overrides for `--profile paper`

Each run lands in `papermill_runs/<spec>/<run>/`: the executed notebook, `parameters.json`, the notebook's
`results.json` and `manifest.json` (git commit, package versions, seed, host, duration, the CPU numerics it ran
under, the aa_lib files it imported). A run executes in a `.partial` folder that is renamed into place only when it
succeeds, so a run killed halfway leaves nothing that looks finished and is redone cleanly. A finished run is skipped
only while everything it depends on is unchanged: its notebook, parameters and profile, the results it reads, the
package versions and CPU numerics (aa_lib.numerics), and the source of every aa_lib module its kernel imported (so
editing aa_lib reruns exactly the runs that used the edited file; `--force` redoes runs anyway). One failing run
is recorded in `<run>.failed/` and never takes the others with it.
Dependencies are per run (llf_main for one subtask and seed waits for that policy run only), and a run executes under
a file lock, so two processes (two Slurm jobs) never execute the same run at once.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import yaml
from filelock import FileLock, Timeout

import aa_lib
from aa_lib import numerics
from aa_lib.media import write_text_atomic

REPO_ROOT = Path(__file__).resolve().parent.parent
# The installed package's own files (the checkout itself under `pip install -e`): what a run's code hashes cover.
PACKAGE_ROOT = Path(aa_lib.__file__).resolve().parent
PROVENANCE_FILE = ".provenance.json"  # written by save_results in the kernel, folded into manifest.json
RUNS_ROOT = REPO_ROOT / "papermill_runs"
PROFILES = ("tiny", "paper")
_VERSIONED = ("aa_lib", "torch", "torchvision", "transformers", "trl", "peft", "accelerate", "datasets", "numpy",
              "papermill", "matplotlib")


@dataclass
class RunSpec:
    name: str
    notebook: Path
    parameters: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    needs: list = field(default_factory=list)
    profiles: dict = field(default_factory=dict)
    smoke: dict = field(default_factory=dict)  # parameter overrides for a seconds-long check run (tests)

    @classmethod
    def from_file(cls, path: Path) -> "RunSpec":
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
        unknown = set(data) - {"notebook", "parameters", "grid", "needs", "profiles", "smoke", "description"}
        if unknown or "notebook" not in data:
            raise ValueError(f"{path}: a run spec needs `notebook` and may have parameters/grid/needs/profiles; "
                             f"unknown keys: {sorted(unknown)}")
        return cls(name=Path(path).stem, notebook=REPO_ROOT / data["notebook"], needs=list(data.get("needs") or []),
                   **{k: data.get(k) or {} for k in ("parameters", "grid", "profiles", "smoke")})

    def _merged(self, key: str, profile: str, smoke: bool) -> dict:
        """`parameters` or `grid`, with this profile's overrides and (on request) the smoke ones over them."""
        return {**getattr(self, key), **self.profiles.get(profile, {}).get(key, {}),
                **(self.smoke.get(key, {}) if smoke else {})}

    def runs(self, profile: str = "tiny", smoke: bool = False, subtasks: list | None = None) -> list[tuple[str, dict]]:
        """(run name, parameters) for every grid combination at this profile (at smoke size on request); `subtasks`
        replaces a `subtask` grid (the subtasks a paths YAML names)."""
        base = {**self._merged("parameters", profile, smoke), "profile": profile}
        grid = self._merged("grid", profile, smoke)
        if subtasks is not None and "subtask" in grid:
            grid["subtask"] = list(subtasks)
        keys = sorted(grid)
        out = []
        for combo in itertools.product(*(grid[k] for k in keys)):
            params = {**base, **dict(zip(keys, combo))}
            name = "_".join(f"{k}-{v}" for k, v in zip(keys, combo)) or "default"
            out.append((name if profile == "tiny" else f"{profile}_{name}", params))
        return out


def load_specs(runs_root: Path = RUNS_ROOT) -> dict[str, RunSpec]:
    return {p.stem: RunSpec.from_file(p) for p in sorted(Path(runs_root).glob("*.yaml"))}


def ordered(specs: dict[str, RunSpec], names: list[str] | None = None) -> list[RunSpec]:
    """Specs in dependency order (the ones asked for, and what they need)."""
    seen, out = set(), []

    def visit(name, stack=()):
        if name in stack:
            raise ValueError(f"run specs depend on each other in a cycle: {' -> '.join((*stack, name))}")
        if name in seen:
            return
        if name not in specs:
            raise KeyError(f"no run spec {name!r} (have: {', '.join(specs)})")
        for dep in specs[name].needs:
            visit(dep, (*stack, name))
        seen.add(name)
        out.append(specs[name])

    for name in names or list(specs):
        visit(name)
    return out


# ---------------------------------------------------------------- results, for notebooks
def save_results(output_dir: str | os.PathLike, results: dict) -> Path:
    """Called by a notebook at its end: its numbers, as JSON, atomically. Beside them, for the runner's manifest,
    what produced them: the aa_lib source files this kernel imported and the CPU numerics it ran under."""
    out = write_text_atomic(Path(output_dir) / "results.json",
                            json.dumps(results, indent=2, sort_keys=True, default=_jsonable))
    provenance = {"code": code_hashes(imported_aa_lib_files()), "numerics": numerics.in_effect()}
    write_text_atomic(Path(output_dir) / PROVENANCE_FILE, json.dumps(provenance, indent=2, sort_keys=True))
    return out


def runs_root_default() -> Path:
    """`$AA_RUNS_ROOT` (set by the runner, so a figure notebook reads the runs of its own batch) or papermill_runs/."""
    return Path(os.environ.get("AA_RUNS_ROOT") or RUNS_ROOT)


def load_results(spec: str, runs_root: str | os.PathLike | None = None, profile: str = "tiny") -> list[dict]:
    """Every finished run of a spec at a profile: [{"run", "parameters", "results", "manifest"}], sorted by run name."""
    runs_root = runs_root or runs_root_default()
    out = []
    for manifest_path in sorted(Path(runs_root, spec).glob("*/manifest.json")):
        run_dir = manifest_path.parent
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("profile", "tiny") != profile:
            continue
        results_path = run_dir / "results.json"
        out.append({"run": run_dir.name, "parameters": json.loads((run_dir / "parameters.json").read_text()),
                    "results": json.loads(results_path.read_text()) if results_path.exists() else {},
                    "manifest": manifest})
    return out


def seed_folder(run_dir: str | os.PathLike, seed: int) -> Path:
    """Where seed k of a run that loops over seeds works: `<run>/seed-k/` (written by the notebook, read back here)."""
    return Path(run_dir) / f"seed-{seed}"


def load_seed_results(spec: str, runs_root: str | os.PathLike | None = None, profile: str = "tiny") -> list[dict]:
    """`load_results`, one entry per seed: a run whose notebook loops over seeds saves {"per_seed": [{"seed", ...}]}
    and its seed k lives in `<run>/seed-k/`; other runs come back as they are. Entries: {"run", "seed_dir",
    "parameters", "results", "manifest"}."""
    root = Path(runs_root or runs_root_default())
    out = []
    for r in load_results(spec, root, profile):
        if "per_seed" not in r["results"]:
            out.append({**r, "seed_dir": root / spec / r["run"]})
            continue
        for entry in r["results"]["per_seed"]:
            out.append({**r, "results": entry, "seed_dir": seed_folder(root / spec / r["run"], entry["seed"])})
    return out


def _jsonable(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} into results.json")


# ---------------------------------------------------------------- executing runs
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _package_files(root: Path, sources: bool = True) -> list[str]:
    """Files of the package under `root` (relative paths), without bytecode; `sources=False`: data files only."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.suffix != ".pyc" and "__pycache__" not in p.parts
                  and (sources or p.suffix != ".py"))


def imported_aa_lib_files() -> list[str]:
    """The package files this process has used: every imported aa_lib module's source, and every data file (the
    reported CSVs are read by path, not imported). Paths relative to PACKAGE_ROOT."""
    files = set(_package_files(PACKAGE_ROOT, sources=False))
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if (name == "aa_lib" or name.startswith("aa_lib.")) and path:
            path = Path(path).resolve()
            if path.is_relative_to(PACKAGE_ROOT):
                files.add(str(path.relative_to(PACKAGE_ROOT)))
    return sorted(files)


def code_hashes(files: list[str] | None = None) -> dict[str, str]:
    """sha256 of package files (paths relative to PACKAGE_ROOT; default: every file of the package)."""
    root = PACKAGE_ROOT
    return {f: (_sha((root / f).read_bytes()) if (root / f).is_file() else "missing")
            for f in (_package_files(root) if files is None else files)}


def code_unchanged(recorded: dict[str, str] | None) -> bool:
    """True when every aa_lib file a finished run used still has the content it had then."""
    return bool(recorded) and code_hashes(list(recorded)) == recorded


def matching_runs(spec: RunSpec, params: dict, dep: RunSpec, profile: str = "tiny", smoke: bool = False,
                  subtasks: list | None = None) -> list[str]:
    """The runs of `dep` that a run of `spec` with `params` reads: those agreeing on the grid keys both specs share
    (llf_main's subtask=ti2t, seed=1 reads policy's subtask=ti2t, seed=1); every run when they share none (a
    figure reads them all)."""
    shared = set(spec._merged("grid", profile, smoke)) & set(dep._merged("grid", profile, smoke))
    return [r for r, p in dep.runs(profile, smoke, subtasks) if all(p.get(k) == params.get(k) for k in shared)]


def fingerprint(spec: RunSpec, params: dict, runs_root: Path, deps: dict[str, list[str]] | None = None) -> str:
    """What a run's outputs depend on, besides aa_lib's source (`code_unchanged`): its notebook, its parameters, the
    package versions, the CPU numerics its kernel gets, and the results of the runs it reads (`deps`: spec -> run
    names; default every finished run of each spec in `needs`)."""
    h = hashlib.sha256()
    h.update(spec.notebook.read_bytes())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    h.update(json.dumps({k: v for k, v in _versions().items() if k != "aa_lib"}, sort_keys=True).encode())
    h.update(numerics.fingerprint_part(_kernel_env()).encode())
    for dep in sorted(spec.needs):
        names = None if deps is None else set(deps.get(dep, ()))
        for res in sorted(Path(runs_root, dep).glob("*/results.json")):
            if names is None or res.parent.name in names:
                h.update(res.parent.name.encode() + _sha(res.read_bytes()).encode())
    return h.hexdigest()


# `python -m papermill`, minus the 2 s that jsonschema spends importing its IRI grammar (rfc3987_syntax) through
# nbformat's validator: notebooks never hold IRI-format fields, and every run paid it once.
_PAPERMILL_MAIN = "import sys; sys.modules['rfc3987_syntax'] = None; from papermill.cli import papermill; papermill()"


@functools.lru_cache(maxsize=1)
def _versions() -> dict:
    out = {}
    for pkg in _VERSIONED:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "aa_lib", "notebooks"], cwd=REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


@dataclass
class RunOutcome:
    spec: str
    run: str
    status: str  # "done", "skipped", "failed", "busy" (another process holds the run's lock)
    seconds: float = 0.0
    error: str = ""


def execute_run(spec: RunSpec, run: str, params: dict, runs_root: Path, force: bool = False,
                timeout_s: float | None = None, figures_dir: Path | None = None,
                deps: dict[str, list[str]] | None = None) -> RunOutcome:
    """One run, under a per-run lock: a second process asking for the same run (two Slurm jobs, two shells)
    gets "busy" instead of deleting the first one's work in progress."""
    lock_path = Path(runs_root) / spec.name / f".{run}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(lock_path, timeout=0):
            return _execute_locked(spec, run, params, Path(runs_root), force, timeout_s, figures_dir, deps)
    except Timeout:  # raised only by the lock: nothing in a run uses filelock
        return RunOutcome(spec.name, run, "busy", error=f"another process is executing it (lock {lock_path})")


def _execute_locked(spec, run, params, runs_root: Path, force, timeout_s, figures_dir, deps) -> RunOutcome:
    final = runs_root / spec.name / run
    fp = fingerprint(spec, params, runs_root, deps)
    manifest_path = final / "manifest.json"
    if not force and manifest_path.exists():
        previous = json.loads(manifest_path.read_text())
        if previous.get("fingerprint") == fp and code_unchanged(previous.get("code")):
            return RunOutcome(spec.name, run, "skipped")
    partial = runs_root / spec.name / f".{run}.partial"
    failed = runs_root / spec.name / f"{run}.failed"
    for stale in (partial, failed):  # leftovers of a killed or failed attempt are redone from scratch
        shutil.rmtree(stale, ignore_errors=True)
    partial.mkdir(parents=True)
    injected = {**params, "output_dir": str(partial.resolve())}
    write_text_atomic(partial / "parameters.json", json.dumps(params, indent=2, sort_keys=True))
    params_file = partial / ".papermill_parameters.yaml"
    params_file.write_text(yaml.safe_dump(injected))
    start = time.time()
    cmd = [sys.executable, "-c", _PAPERMILL_MAIN, str(spec.notebook), str(partial / spec.notebook.name),
           "-f", str(params_file), "--cwd", str(REPO_ROOT), "-k", "python3", "--no-progress-bar"]
    env = {**_kernel_env(), "AA_RUNS_ROOT": str(runs_root.resolve())}
    if figures_dir is not None:
        env["AA_FIGURES_DIR"] = str(Path(figures_dir).resolve())
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
        ok, log = proc.returncode == 0, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        ok, log = False, f"timed out after {timeout_s} s\n{e.stderr or ''}"
    seconds = time.time() - start
    params_file.unlink(missing_ok=True)
    if not ok:
        write_text_atomic(partial / "error.txt", log)
        partial.rename(failed)
        return RunOutcome(spec.name, run, "failed", seconds, _last_error(log))
    # A notebook that called save_results says which aa_lib files it imported and under which numerics it ran;
    # for one that did not, every package file counts and the numerics are what its kernel was started with.
    provenance_path = partial / PROVENANCE_FILE
    if provenance_path.exists():
        provenance = json.loads(provenance_path.read_text())
        provenance_path.unlink()
    else:
        provenance = {"code": code_hashes(), "numerics": numerics.in_effect(env)}
    manifest = {"spec": spec.name, "run": run, "notebook": str(spec.notebook.relative_to(REPO_ROOT)),
                "profile": params.get("profile", "tiny"), "seed": params.get("seed", params.get("seeds")),
                "fingerprint": fp, "code": provenance["code"], "numerics": provenance["numerics"],
                "git_commit": _git_commit(), "versions": _versions(), "host": platform.node(),
                "python": platform.python_version(), "duration_s": round(seconds, 2),
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))}
    write_text_atomic(partial / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
    if final.exists():  # an outdated finished run: replace it only now that the new one is complete
        trash = final.with_name(f".{run}.old")
        shutil.rmtree(trash, ignore_errors=True)
        final.rename(trash)
        shutil.rmtree(trash)
    partial.rename(final)
    return RunOutcome(spec.name, run, "done", seconds)


def _kernel_env() -> dict:
    """The environment every notebook kernel starts with: offline, and the CPU numerics pinned before torch loads
    (the notebooks import torch before aa_lib, so the pinning must already be there)."""
    return numerics.pinned_env({**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                "MPLBACKEND": "Agg"})


def _last_error(log: str) -> str:
    lines = [ln for ln in log.strip().splitlines() if ln.strip()]
    errs = [ln for ln in lines if "Error" in ln or "Exception" in ln]
    return (errs or lines or ["(no output)"])[-1][:500]


def _downstream_depth(specs: list[RunSpec]) -> dict[str, int]:
    """How many specs wait behind each spec on its longest chain (policy -> llf_main -> fraction -> figure: 3)."""
    depth = {s.name: 0 for s in specs}
    for s in reversed(specs):  # dependency order reversed: dependents first
        for d in s.needs:
            if d in depth:
                depth[d] = max(depth[d], depth[s.name] + 1)
    return depth


class _Progress:
    """One line per finished run: `[k/N, elapsed, ~estimate left] spec/run: status`. The estimate is the mean time
    of the runs executed so far times the runs left, shared by the jobs (none before the first run finishes)."""

    def __init__(self, total: int, jobs: int, log):
        self.total, self.jobs, self.log = total, jobs, log
        self.start, self.finished, self.executed = time.time(), 0, []

    def report(self, outcome: RunOutcome, what: str) -> None:
        self.finished += 1
        if outcome.status in ("done", "failed") and outcome.seconds:
            self.executed.append(outcome.seconds)
        elapsed = time.time() - self.start
        left = self.total - self.finished
        estimate = ""
        if left and self.executed:
            estimate = f", ~{_clock(sum(self.executed) / len(self.executed) * left / self.jobs)} left"
        self.log(f"[{self.finished}/{self.total}, {_clock(elapsed)} elapsed{estimate}] {outcome.spec}/{outcome.run}: "
                 f"{what}")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


def run_specs(names: list[str] | None = None, *, profile: str = "tiny", jobs: int = 1, force: bool = False,
              runs_root: Path = RUNS_ROOT, timeout_s: float | None = None, smoke: bool = False,
              figures_dir: Path | None = None, specs_root: Path | None = None, inputs: dict | None = None,
              parameters: dict | None = None, log=print) -> list[RunOutcome]:
    """Execute specs (from `specs_root`, default `runs_root`) into `runs_root`.

    `inputs` ({subtask: entry}, `aa_lib.inputs.read_paths`) names the subtasks to run (in place of the specs'
    `subtask` grids), and each such run gets its subtask's entry as the notebook parameter `inputs`; `parameters`
    ({spec: {name: value}}, `aa_lib.inputs.read_parameters`) are set on every run of their spec.

    Dependencies are per run: a run starts as soon as the runs it reads are finished (`matching_runs`), so
    llf_main for (ti2t, seed 1) need not wait for the slowest policy. Up to `jobs` runs execute at once; among the
    runs ready to go, those with the longest chain of specs behind them go first. Dependents of a failed (or busy)
    run are reported, not run; everything else still runs.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; use one of {PROFILES}")
    jobs = max(1, jobs)
    specs = ordered(load_specs(specs_root or runs_root), names)
    by_name = {s.name: s for s in specs}
    depth = _downstream_depth(specs)
    subtasks = None if inputs is None else list(inputs)
    todo = []  # (priority, spec, run, params, deps)
    for k, spec in enumerate(specs):
        for j, (run, params) in enumerate(spec.runs(profile, smoke, subtasks)):
            deps = {d: matching_runs(spec, params, by_name[d], profile, smoke, subtasks) for d in spec.needs}
            if inputs is not None and "subtask" in params:
                params = {**params, "inputs": inputs[params["subtask"]]}
            params = {**params, **(parameters or {}).get(spec.name, {})}
            todo.append(((-depth[spec.name], k, j), spec, run, params, deps))
    todo.sort(key=lambda t: t[0])
    state: dict[tuple[str, str], str] = {}  # (spec, run) -> done / skipped / failed / busy
    outcomes: list[RunOutcome] = []
    running = {}
    progress = _Progress(len(todo), jobs, log)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while todo or running:
            for item in list(todo):
                _, spec, run, params, deps = item
                needed = [(d, r) for d, rs in deps.items() for r in rs]
                bad = [f"{d}/{r}" for d, r in needed if state.get((d, r)) in ("failed", "busy")]
                if bad:
                    todo.remove(item)
                    state[(spec.name, run)] = "failed"
                    o = RunOutcome(spec.name, run, "failed", error=f"needs {', '.join(bad)}, which did not finish")
                    outcomes.append(o)
                    progress.report(o, f"not run: {o.error}")
                elif len(running) < jobs and all(state.get(n) in ("done", "skipped") for n in needed):
                    todo.remove(item)
                    fut = pool.submit(execute_run, spec, run, params, Path(runs_root), force, timeout_s,
                                      figures_dir, deps)
                    running[fut] = (spec.name, run)
            if not running:
                if todo:  # nothing runs and nothing can start: a need outside the selected specs
                    raise RuntimeError(f"runs waiting on needs that never run: {[(t[1].name, t[2]) for t in todo]}")
                continue
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                running.pop(fut)
                o = fut.result()
                outcomes.append(o)
                state[(o.spec, o.run)] = o.status
                progress.report(o, o.status + (f" in {o.seconds:.0f} s" if o.status == "done" else "")
                                + (f": {o.error}" if o.error else ""))
    order = {spec.name: k for k, spec in enumerate(specs)}
    return sorted(outcomes, key=lambda o: (order[o.spec], o.run))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aa_lib.runs", description=__doc__.split("\n")[0])
    ap.add_argument("specs", nargs="*", help="spec names under papermill_runs/, or `all`")
    ap.add_argument("--profile", default="tiny", choices=PROFILES)
    ap.add_argument("--jobs", type=int, default=1, help="runs executed at once (across specs whose needs are done)")
    ap.add_argument("--force", action="store_true", help="redo finished runs even when nothing they depend on changed")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per run before it counts as failed")
    ap.add_argument("--runs-root", type=Path, default=RUNS_ROOT)
    ap.add_argument("--list", action="store_true", help="list specs and their runs, execute nothing")
    ap.add_argument("--smoke", action="store_true", help="each spec at its `smoke` size (a quick check, not results)")
    ap.add_argument("--figures-dir", type=Path, default=None, help="write figures here instead of paper_figures/")
    ap.add_argument("--inputs", type=Path, default=None, help="profile paper: the YAML naming each subtask's "
                    "checkpoint, data, benchmarks and judge (aa_lib.inputs); checked before any run starts")
    args = ap.parse_args(argv)
    inputs = parameters = None
    if args.inputs is not None:
        from aa_lib.inputs import read_parameters, read_paths

        try:
            inputs, parameters = read_paths(args.inputs), read_parameters(args.inputs)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    names = None if not args.specs or args.specs == ["all"] else args.specs
    if args.list:
        for spec in ordered(load_specs(args.runs_root), names):
            print(f"{spec.name}: {spec.notebook.relative_to(REPO_ROOT)} needs={spec.needs} "
                  f"runs={[r for r, _ in spec.runs(args.profile)]}")
        return 0
    runs_root, figures_dir = args.runs_root, args.figures_dir
    if args.smoke:  # smoke runs never mix with real ones: their own runs folder and figures folder
        runs_root = args.runs_root / ".smoke"
        figures_dir = figures_dir or runs_root / "figures"
    outcomes = run_specs(names, profile=args.profile, jobs=args.jobs, force=args.force, runs_root=runs_root,
                         timeout_s=args.timeout, smoke=args.smoke, figures_dir=figures_dir, specs_root=args.runs_root,
                         inputs=inputs, parameters=parameters)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed", "busy")}
    print(f"runs: {counts['done']} done, {counts['skipped']} skipped (unchanged), {counts['failed']} failed"
          + (f", {counts['busy']} busy in another process" if counts["busy"] else ""))
    for o in outcomes:
        if o.status == "failed":
            print(f"  FAILED {o.spec}/{o.run}: {o.error}  (see {runs_root / o.spec / o.run}.failed/error.txt)")
        elif o.status == "busy":
            print(f"  BUSY {o.spec}/{o.run}: {o.error}")
    return 1 if counts["failed"] or counts["busy"] else 0


if __name__ == "__main__":
    sys.exit(main())
