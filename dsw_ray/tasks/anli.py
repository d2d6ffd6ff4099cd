"""ANLI rounds 1 and 2 (tasks ``anli_a1``, ``anli_a2``): does a premise entail a hypothesis?
A preset of ``custom``.

A row is ``{"uid": ..., "context": <premise>, "hypothesis": ..., "label": "e" | "n" | "c",
"reason": <the annotator's explanation>, ...}`` as released (``R1/dev.jsonl``,
``R1/test.jsonl``; the same for ``R2``). The question is the paper's
``"<premise>" Based on this premise, can we conclude the hypothesis "<hypothesis>" is
true? Answer Choices are: A)yes; B)no; C)impossible to tell.``; gold e is (A), c is (B),
n is (C).

The split cannot follow the paper: it generates on the first 2000 rows of each round's
training file, which is not available here. So ``dev.jsonl`` is the unlabeled question set
but for its last 5% (50 of 1000 rows), the labeled valid set, whose rationale is the
annotator's ``reason`` followed by the answer (``<reason> So the answer is no. The answer
is (B).``, the layout of the exemplars); the test set is the first 500 rows of
``test.jsonl``, as in the paper. ``task.data_path`` is the round's folder (``.../anli/R1``).

The end of one real prompt (the first row of ``R1/dev.jsonl``; the three exemplars come
first), a candidate as a model might write it, and what the parser reads from it::

    Q: "Linguistics is the scientific study of language, and involves an analysis of language form,
    language meaning, and language in context. ..." Based on this premise, can we conclude the hypothesis
    "Form and meaning are the only aspects of language linguistics is concerned with." is true? Answer
    Choices are: A)yes; B)no; C)impossible to tell.
    A: <candidate: "The premise says linguistics also analyses language in context. So the answer is
    no. The answer is (B).">
    parse_answer(candidate) == "B" (gold: c)
"""

from __future__ import annotations

from dsw_ray.tasks.custom import CustomTask, Exemplar, Fields, Split, folder_preset

QUESTION = '"{context}" Based on this premise, can we conclude the hypothesis "{hypothesis}" is true?'


def question(premise: str, hypothesis: str) -> str:
    return QUESTION.format(context=premise, hypothesis=hypothesis)


# Written for dsw-ray: one exemplar per label, the reasoning quoting the premise.
EXEMPLARS = [
    Exemplar(
        question=question(
            "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889 as the entrance "
            "to the World's Fair.",
            "The Eiffel Tower was finished in the nineteenth century.",
        ),
        answer="The premise says the tower was completed in 1889, which is in the nineteenth century. "
        "So the answer is yes. The answer is (A).",
    ),
    Exemplar(
        question=question(
            "Maria Lopez is a Spanish swimmer who won two bronze medals at the 2008 European Championships.",
            "Maria Lopez has never won a medal at a European Championship.",
        ),
        answer="The premise says she won two bronze medals at the 2008 European Championships, so she has won "
        "medals there. So the answer is no. The answer is (B).",
    ),
    Exemplar(
        question=question(
            "The Old Mill is a restaurant on the river bank that serves local fish and opens only in summer.",
            "The Old Mill is the most expensive restaurant in town.",
        ),
        answer="The premise says what the restaurant serves and when it opens, but nothing about its prices or "
        "other restaurants. So the answer is impossible to tell. The answer is (C).",
    ),
]

SPEC = CustomTask(
    format="jsonl",
    answer_type="choice",
    fields=Fields(id="uid", answer="label"),
    question_template=QUESTION,
    choice_texts=["yes", "no", "impossible to tell"],
    answer_map={"e": "A", "c": "B", "n": "C"},
    rationale_template="{reason} So the answer is {choice}.",
    exemplars=EXEMPLARS,
    # dev.jsonl: questions, then its last 5% as the valid set (the paper's ANLI valid-set sizes
    # are not published); the paper tests on the first 500 test rows of each round.
    split=Split(test_path="test.jsonl", test_rows=500, valid_fraction=0.05),
)

EXPECTED = "task.data_path for anli_a1 and anli_a2 is a round's folder holding dev.jsonl and test.jsonl (e.g. .../anli/R1)."
load = folder_preset(SPEC, "dev.jsonl", EXPECTED)
