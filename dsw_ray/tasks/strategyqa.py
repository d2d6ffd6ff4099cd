"""StrategyQA: yes/no questions that need implicit multi-step reasoning; a preset of ``custom``.

A row is ``{"qid": ..., "question": "Is ...?", "answer": true, "facts": "...", ...}``, as in
the commonly used 1603 / 687 train / test split the paper took (``train.jsonl``,
``test.jsonl`` in the folder ``task.data_path``). The choices are ``A)yes; B)no.``: gold
true is (A), false is (B). The paper's split: the first 1580 train rows are the unlabeled
questions, the rest of train (23 of the published 1603; the same share of a file of another
size) the labeled valid set, whose rationale is the annotators' ``facts`` followed by the
answer (``<facts> So the answer is no. The answer is (B).``), the layout of the exemplars.

The end of one real prompt (the first row of ``train.jsonl``; the five exemplars come
first), a candidate as a model might write it, and what the parser reads from it::

    Q: Is Mixed martial arts totally original from Roman Colosseum games? Answer Choices are: A)yes; B)no.
    A: <candidate: "Roman Colosseum games were also fights in enclosed arenas before crowds. So the
    answer is no. The answer is (B).">
    parse_answer(candidate) == "B" (gold: false)
"""

from __future__ import annotations

from dsw_ray.tasks.custom import CustomTask, Exemplar, Fields, Split, folder_preset

# Written for dsw-ray: two or three facts, then the yes/no conclusion and the letter.
EXEMPLARS = [
    Exemplar(
        question="Could a goldfish survive a week in the Sahara desert without water?",
        answer="A goldfish breathes through gills and needs to live in water. Out of water it dies within minutes. "
        "So the answer is no. The answer is (B).",
    ),
    Exemplar(
        question="Would a person born in 1990 have been able to vote in the 2012 US election?",
        answer="Americans may vote from the age of 18. A person born in 1990 turned 22 in 2012. "
        "So the answer is yes. The answer is (A).",
    ),
    Exemplar(
        question="Is a piano likely to fit inside a shoebox?",
        answer="A piano is over a meter wide and weighs hundreds of kilograms. A shoebox is about 30 centimeters long. "
        "So the answer is no. The answer is (B).",
    ),
    Exemplar(
        question="Did the people who built the pyramids of Giza know of the Roman Empire?",
        answer="The pyramids of Giza were built around 2500 BC. The Roman Empire began in 27 BC, more than two "
        "thousand years later. So the answer is no. The answer is (B).",
    ),
    Exemplar(
        question="Can you see the Moon during the day?",
        answer="The Moon is above the horizon for about half of every day, and it is bright enough to be seen in a "
        "blue sky on many days. So the answer is yes. The answer is (A).",
    ),
]

SPEC = CustomTask(
    format="jsonl",
    answer_type="choice",
    fields=Fields(id="qid", question="question", answer="answer"),
    choice_texts=["yes", "no"],
    answer_map={"true": "A", "false": "B"},
    rationale_template="{facts} So the answer is {choice}.",
    exemplars=EXEMPLARS,
    split=Split(test_path="test.jsonl", valid_fraction=23 / 1603),  # train rows 1580.. are the valid set
)

EXPECTED = "task.data_path for strategyqa is the folder holding train.jsonl and test.jsonl."
load = folder_preset(SPEC, "train.jsonl", EXPECTED)
