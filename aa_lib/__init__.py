"""aa_lib: Align Anything, reproducible. All-modality alignment with language feedback over Hugging Face TRL."""
from aa_lib.subtasks import SUBTASKS, TRAINED_SUBTASKS, Dimension, Subtask, get_subtask

__version__ = "0.1.0"
__all__ = ["SUBTASKS", "TRAINED_SUBTASKS", "Dimension", "Subtask", "get_subtask", "__version__"]
