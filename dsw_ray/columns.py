"""Column names: the contract between stages. Every candidate row is keyed by
``(QUESTION_ID, SAMPLE_INDEX)``; a stage checks the columns it needs before working."""

from __future__ import annotations

QUESTION_ID = "question_id"
SAMPLE_INDEX = "sample_index"
QUESTION = "question"
GOLD = "gold"  # the gold answer; unlabeled questions keep it only for analysis, never for training
PROMPT = "prompt"
TEXT = "text"  # the generated answer, cut before its first stop string ("\nQ:" or a blank line)
SEED = "seed"
PROMPT_TOKENS = "prompt_tokens"
COMPLETION_TOKENS = "completion_tokens"
FINISH_REASON = "finish_reason"  # "stop" (stop string or EOS) or "length"
ANSWER = "answer"  # the parsed final answer, None when unparsable
IS_MAJORITY = "is_majority"
MAJORITY_ANSWER = "majority_answer"
LOSS = "loss"
VALID_LOSS_MEAN = "valid_loss_mean"
DS_WEIGHT = "ds_weight"
REWARD = "reward"  # a reward model's score of the candidate (the rm method)
RATING = "rating"  # the generating model's own 0-10 rating of the candidate (the self method)
LOSS_WEIGHT = "loss_weight"  # the factor on a kept sample's training loss (1 unless a method weights)
CORRECT = "correct"

KEY = (QUESTION_ID, SAMPLE_INDEX)
BY_KEY = [(name, "ascending") for name in KEY]  # pyarrow's sort_by order for rows in key order


def require(batch, needed: tuple[str, ...], stage: str) -> None:
    """Fail with the stage's name when a batch lacks columns it needs."""
    present = set(batch.keys()) if hasattr(batch, "keys") else set(batch.column_names)
    missing = [name for name in needed if name not in present]
    if missing:
        raise KeyError(f"{stage}: input lacks column(s) {missing}; it has {sorted(present)}.")
