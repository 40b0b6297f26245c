"""The tiny profile gives the same numbers on a rerun: the mini world does not depend on Python's hash seed."""
import subprocess
import sys

SCRIPT = """
import hashlib, json
from aa_lib import mini
from aa_lib.subtasks import SUBTASKS
out = {}
for name in SUBTASKS:
    rows = mini.generate(name, 40, seed=5)
    text = [{k: v for k, v in r.items() if isinstance(v, (str, int))} for r in rows]
    out[name] = hashlib.sha256(json.dumps(text, sort_keys=True).encode()).hexdigest()
print(json.dumps(out))
"""


def _digest(hash_seed: str) -> str:
    env = {"PYTHONHASHSEED": hash_seed, "HF_HUB_OFFLINE": "1", "PATH": ""}
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True).stdout


def test_mini_rows_do_not_depend_on_the_hash_seed():
    first, second = _digest("1"), _digest("2")
    assert first == second
