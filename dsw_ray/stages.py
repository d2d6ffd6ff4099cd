"""What each stage of a run is, declared once: its name (a round's stages in the order they
run), its artifact version, what a row it reads and writes is, what its progress bar counts,
and the columns it adds that a method's filter reads. The run directory, the progress bars,
the job config and the round read these records; a new stage is one record here, its own
module and its place in the round.

>>> spec("generate").reads, spec("generate").writes
('questions', 'candidates')
>>> ROUND
('generate', 'vote', 'score', 'reward', 'rate', 'filter', 'train', 'evaluate')
"""

from __future__ import annotations

from dataclasses import dataclass

from dsw_ray import columns as C


@dataclass(frozen=True)
class StageSpec:
    name: str
    # Bumped when the stage's code changes what it writes: a rerun recomputes it and, through
    # the chained fingerprints, everything after it. ``history`` says what each bump changed.
    version: int
    history: str
    reads: str  # what a row it reads is, for its start and done lines
    writes: str  # what a row it writes is
    in_round: bool = True  # one of a round's stages (not the run's inputs)
    progress: str | None = None  # what its progress bar counts (None: no bar)
    progress_rows: str | None = None  # what its actors' output rows are, shown beside the bar
    adds: tuple[str, ...] = ()  # columns a method's filter reads from it (``filters.Method.needs``)


SPECS = (
    StageSpec("questions", 1, "", "questions", "questions", in_round=False),
    StageSpec("test", 1, "", "questions", "questions", in_round=False),
    StageSpec(
        "generate", 2, "2: BOS as the model's tokenizer adds it, the prompt's boundary from its exemplars",
        "questions", "candidates", progress="questions", progress_rows="candidates",
    ),
    StageSpec("vote", 2, "2: semantics official parses as the authors' derive_num_from_output does", "candidates", "candidates"),
    StageSpec(
        "score", 3,
        "2: BOS, and the prompt/answer boundary of the text tokenized whole; 3: official BOS as the tokenizer adds it",
        "candidates", "majority candidates scored", progress="candidates",
        adds=(C.LOSS, C.VALID_LOSS_MEAN, C.DS_WEIGHT),
    ),  # fmt: skip
    StageSpec(
        "reward", 2, "2: semantics official reads the authors' 'question[SEP]answer'",
        "candidates", "majority candidates scored", progress="candidates", adds=(C.REWARD,),
    ),
    StageSpec("rate", 2, "2: BOS", "candidates", "majority candidates rated", progress="candidates", adds=(C.RATING,)),
    StageSpec(
        "filter", 2, "2: the official entropy filter's scale; entropy_threshold 0.8 by default", "candidates", "kept"
    ),
    StageSpec(
        "train", 3, "2: workers read the kept parquet and shuffle each epoch by seed; 3: as score's 2",
        "samples", "optimizer steps", progress="steps",
    ),
    StageSpec("evaluate", 3, "2: as generate's 2; 3: as vote's 2", "questions", "answers", progress="questions"),
)
BY_NAME = {s.name: s for s in SPECS}
ROUND = tuple(s.name for s in SPECS if s.in_round)


def spec(name: str) -> StageSpec:
    return BY_NAME[name]
