import os

# Nothing may come from the Hugging Face hub, in tests as at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

# Tiny models gain nothing from intra-op threads, and on a 2-core machine shared with notebook kernels and
# subprocess runs, extra threads oversubscribe the cores (seen: 50x slower steps). One thread per test process.
torch.set_num_threads(1)
