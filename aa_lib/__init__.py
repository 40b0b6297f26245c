"""aa_lib: Align Anything, reproducible. All-modality alignment with language feedback over Hugging Face TRL."""
# First, before anything below can import torch: the CPU numerics that make numbers travel between machines
# (aa_lib.numerics; AA_NATIVE_NUMERICS=1 opts out).
from aa_lib import numerics

numerics.pin()

from aa_lib.subtasks import SUBTASKS, TRAINED_SUBTASKS, Dimension, Subtask, get_subtask  # noqa: E402

__version__ = "0.1.0"
__all__ = ["SUBTASKS", "TRAINED_SUBTASKS", "Dimension", "Subtask", "get_subtask", "__version__"]
