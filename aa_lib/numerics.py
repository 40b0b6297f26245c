"""CPU numerics that travel: the same floating-point results on every x86-64 machine.

torch picks its matrix and vector kernels by the CPU's instruction set: MKL (BLAS), oneDNN and ATen's own
vectorised kernels each have AVX2 and AVX-512 (and AMX) code paths that round differently in the last bits. Tiny
training amplifies those bits into different checkpoints and different tables (a T2I initial policy scored 69.3 on
one machine and 61.0 on another). Three variables, read by those libraries when they initialise, hold every x86-64
machine to the AVX2 paths; an AVX-512 machine then reproduces an AVX2 machine's weights bit for bit, at no measured
cost for the tiny profile's sizes:

    ATEN_CPU_CAPABILITY=avx2   ATen's vectorised kernels
    MKL_CBWR=AVX2              MKL's conditional numerical reproducibility (BLAS)
    ONEDNN_MAX_CPU_ISA=AVX2    oneDNN (convolutions, some matmuls)

They must be in the environment before torch is imported. Importing `aa_lib` sets them (as defaults: a value the
user already set wins), and every process aa_lib starts (papermill kernels, accelerate, benchmark workers) inherits
them. A notebook kernel that imported torch before aa_lib gets them from the runner's environment (`make figures`,
`python -m aa_lib.runs`); `make lab` starts JupyterLab with them set.

Opting out: `AA_NATIVE_NUMERICS=1` in the environment leaves torch to choose its native kernels (AVX-512, AMX bf16:
several times the fp32 matmul rate on an AMX Xeon) for your own real-size work; runs record which numerics they used
(`manifest.json` -> "numerics"), and a change of numerics reruns them.
"""
from __future__ import annotations

import os
import platform
import sys
import warnings
from functools import lru_cache

PINNED_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
OPT_OUT = "AA_NATIVE_NUMERICS"
# Also reported: MKL_ENABLE_INSTRUCTIONS=AVX2 makes an AVX-512 machine behave as an AVX2-only one (the tests use it).
REPORTED_ENV = (*PINNED_ENV, "MKL_ENABLE_INSTRUCTIONS", OPT_OUT, "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def is_native(environ=None) -> bool:
    """True when the user opted out of the pinning (AA_NATIVE_NUMERICS set to anything but '', 0, false, no)."""
    value = (os.environ if environ is None else environ).get(OPT_OUT, "").strip().lower()
    return value not in ("", "0", "false", "no")


def applies_here() -> bool:
    """The pinning is for x86-64 CPUs; other architectures have one code path per kernel to begin with."""
    return platform.machine().lower() in ("x86_64", "amd64")


def pinned_env(environ=None) -> dict:
    """`environ` (default os.environ) with the pinning variables added where unset (unless the user opted out)."""
    env = dict(os.environ if environ is None else environ)
    if is_native(env) or not applies_here():
        return env
    for key, value in PINNED_ENV.items():
        env.setdefault(key, value)
    return env


def pin() -> None:
    """Put the pinning into os.environ, for this process (if torch is not loaded yet) and every child it starts.

    Called when `aa_lib` is imported. If torch was imported first and the variables were not already set, the ATen
    and MKL choices may have been made already: a warning says so (the runner and `make lab` set them beforehand).
    """
    if is_native() or not applies_here():
        return
    missing = [k for k in PINNED_ENV if k not in os.environ]
    os.environ.update({k: PINNED_ENV[k] for k in missing})
    if missing and "torch" in sys.modules:
        capability = sys.modules["torch"].backends.cpu.get_cpu_capability()
        if capability.lower() != PINNED_ENV["ATEN_CPU_CAPABILITY"]:
            warnings.warn(f"torch was imported before aa_lib and runs {capability} kernels: numbers may differ from "
                          f"other machines; import aa_lib first or set {', '.join(missing)} before starting Python "
                          f"(or {OPT_OUT}=1 to silence this)", stacklevel=3)


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name as the OS reports it (e.g. 'Intel(R) Xeon(R) Processor'), or platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def in_effect(environ=None) -> dict:
    """What this process computes under: CPU model, torch's CPU capability, the pinning variables, thread count
    (capability and threads are None in a process that never loaded torch). `environ`: what a process started
    with that environment computes under, as far as it can be told from outside (capability and threads None)."""
    torch = sys.modules.get("torch") if environ is None else None
    env = os.environ if environ is None else environ
    return {"cpu_model": cpu_model(), "machine": platform.machine(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability() if torch else None,
            "pinned": not is_native(env) and applies_here(),
            "torch_threads": torch.get_num_threads() if torch else None, "env": {k: env.get(k) for k in REPORTED_ENV}}


def fingerprint_part(environ=None) -> str:
    """The part of the numerics that decides a run's numbers (not the CPU model: pinned, machines agree)."""
    env = os.environ if environ is None else environ
    return repr(sorted((k, env.get(k)) for k in (*PINNED_ENV, OPT_OUT)))

