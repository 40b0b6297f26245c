"""The eight align-anything subtasks: modalities, preference dimensions and default column names.

One table that every other module reads (SPEC §2). Column names follow the published
`PKU-Alignment/align-anything` configs; for t2i, ti2ti and t2v the names could not be confirmed offline,
so `aa_lib.data.load` accepts a `column_map` that renames a user's columns onto these defaults.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dimension:
    """A fine-grained preference dimension: columns `<name>_rate_{1,2}`, `<prefix>_rationale_{1,2}`, `<prefix>_<preferred_suffix>`."""

    name: str
    prefix: str


TEXT_DIMENSIONS = (
    Dimension("prompt_following", "p"),
    Dimension("objective_rules", "o"),
    Dimension("clarity", "c"),
    Dimension("information_richness", "i"),
    Dimension("safety", "s"),
)


@dataclass(frozen=True)
class Subtask:
    name: str  # short id: "ti2t"
    config: str  # the align-anything config name: "text-image-to-text"
    inputs: tuple[str, ...]  # modalities in the prompt: "text", "image", "audio", "video"
    outputs: tuple[str, ...]  # modalities of a response
    prompt_column: str
    media_column: str | None  # the prompt's media (image / audio_path / video_path), None for text-only prompts
    # The defaults are the text-output subtasks' column names.
    response_columns: tuple[str, str] = ("response_1", "response_2")  # the two compared responses (text or media)
    source_columns: tuple[str, str] = ("res_1_from", "res_2_from")  # which model produced each response
    dimensions: tuple[Dimension, ...] = TEXT_DIMENSIONS
    preferred_suffix: str = "response"  # per-dimension choice column is `<prefix>_<preferred_suffix>`
    overall_column: str = "overall_response"  # overall preferred response id (1 or 2)
    critique_columns: tuple[str, str] = ("text_critique_1", "text_critique_2")
    feedback_column: str | None = "overall_textfeedback"  # "##Reason: ... ##Refinement: ..."
    # Extra response columns (ti2ti answers carry an image beside their text).
    response_media_columns: tuple[str, str] | None = None
    extra_columns: tuple[str, ...] = ()
    paper_family: str | None = None  # the model family the paper trains on this subtask (None: no experiment)

    @property
    def code(self) -> str:
        """The paper's name: TI2T, T2I, ..."""
        return "2".join("".join(m[0].upper() for m in mods) for mods in (self.inputs, self.outputs))

    @property
    def response_modality(self) -> str:
        """The modality of `response_1/2` (the first output modality)."""
        return self.outputs[0]

    @property
    def text_output(self) -> bool:
        return self.outputs == ("text",)

    def rate_columns(self, dim: Dimension) -> tuple[str, str]:
        return (f"{dim.name}_rate_1", f"{dim.name}_rate_2")

    def rationale_columns(self, dim: Dimension) -> tuple[str, str]:
        return (f"{dim.prefix}_rationale_1", f"{dim.prefix}_rationale_2")

    def preferred_column(self, dim: Dimension) -> str:
        return f"{dim.prefix}_{self.preferred_suffix}"

    def dimension(self, name_or_prefix: str) -> Dimension:
        for dim in self.dimensions:
            if name_or_prefix in (dim.name, dim.prefix):
                return dim
        known = ", ".join(d.name for d in self.dimensions)
        raise KeyError(f"subtask {self.name} has no dimension {name_or_prefix!r} (known: {known})")

    def columns(self) -> list[str]:
        """Every column of a row in the published schema, in a stable order."""
        cols = [self.prompt_column]
        if self.media_column:
            cols.append(self.media_column)
        cols += [*self.response_columns, *(self.response_media_columns or ()), *self.source_columns]
        for dim in self.dimensions:
            cols += [*self.rate_columns(dim), *self.rationale_columns(dim), self.preferred_column(dim)]
        cols += self.critique_columns
        if self.feedback_column:
            cols.append(self.feedback_column)
        return cols + [self.overall_column, *self.extra_columns]


SUBTASKS: dict[str, Subtask] = {
    s.name: s
    for s in (
        Subtask("t2t", "text-to-text", ("text",), ("text",), "question", None),
        Subtask("ti2t", "text-image-to-text", ("text", "image"), ("text",), "question", "image", paper_family="llava"),
        Subtask("t2i", "text-to-image", ("text",), ("image",), "prompt", None, ("image_1", "image_2"),
                ("image_1_model", "image_2_model"),
                (Dimension("prompt_following", "p"), Dimension("objective_rules", "o"),
                 Dimension("aesthetics", "a"), Dimension("information_richness", "i"),
                 Dimension("safety", "s")),
                "image", "overall_image", paper_family="chameleon"),
        Subtask("ti2ti", "text-image-to-text-image", ("text", "image"), ("text", "image"), "prompt", "image",
                dimensions=(Dimension("prompt_following", "p"), Dimension("objective_rules", "o"),
                            Dimension("clarity_aesthetics", "c"), Dimension("information_richness", "i"),
                            Dimension("safety", "s"), Dimension("text_image_consistency", "t")),
                response_media_columns=("image_1", "image_2"), paper_family="chameleon"),
        Subtask("tv2t", "text-video-to-text", ("text", "video"), ("text",), "prompt", "video_path",
                source_columns=("model_1", "model_2"), paper_family="qwen2_vl"),
        Subtask("t2v", "text-to-video", ("text",), ("video",), "prompt", None, ("video_1", "video_2"),
                ("video_1_model", "video_2_model"),
                (Dimension("instruction_following", "f"), Dimension("aesthetics", "a"),
                 Dimension("information_richness", "i"), Dimension("objective_compliance", "o"),
                 Dimension("video_objective_reality", "r"), Dimension("temporal_consistency", "t"),
                 Dimension("content_coherence", "c"), Dimension("motion_naturalness", "m"),
                 Dimension("safety", "s")),
                "video", "overall_video"),
        Subtask("ta2t", "text-audio-to-text", ("text", "audio"), ("text",), "prompt", "audio_path",
                paper_family="qwen2_audio"),
        Subtask("t2a", "text-to-audio", ("text",), ("audio",), "prompt", None,
                dimensions=(Dimension("prompt_following", "p"), Dimension("audio_quality", "o"),
                            Dimension("consistency", "a"), Dimension("information_richness", "i"),
                            Dimension("safety", "s")),
                preferred_suffix="audio", overall_column="overall_audio",
                critique_columns=("text_1_feedback", "text_2_feedback"), extra_columns=("refine_prompt", "reasoning")),
    )
}

# Subtasks with a training experiment in the paper (SPEC §1), in the paper's order.
TRAINED_SUBTASKS = ("ti2t", "t2i", "ti2ti", "tv2t", "ta2t")


def get_subtask(name: str | Subtask) -> Subtask:
    """Look a subtask up by short id (`ti2t`), paper code (`TI2T`) or config name (`text-image-to-text`)."""
    if isinstance(name, Subtask):
        return name
    key = str(name).strip().lower()
    for s in SUBTASKS.values():
        if key in (s.name, s.config, s.code.lower()):
            return s
    raise KeyError(f"unknown subtask {name!r}; known: {', '.join(SUBTASKS)}")
