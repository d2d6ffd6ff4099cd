"""The multiple-choice tasks (openbookqa, strategyqa, anli_a1, anli_a2) against the real files
in ../shared/data: splits, prompts, parsers, graders, voting over letters, and bad rows."""

from __future__ import annotations

import json
import math
import os

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsw_ray import columns as C
from dsw_ray.errors import DataError
from dsw_ray.filters import answer_entropy, answers_correct
from dsw_ray.tasks import SplitSizes, answers, get_task
from dsw_ray.vote import verdicts

FOLDERS = {
    "openbookqa": "openbookqa",
    "strategyqa": "strategyqa",
    "anli_a1": "anli/R1",
    "anli_a2": "anli/R2",
}
# (unlabeled questions, valid set, test set) with no caps: the paper's test sets.
SIZES = {
    "openbookqa": (4750, 207, 500),
    "strategyqa": (1580, 23, 687),
    "anli_a1": (950, 50, 500),
    "anli_a2": (950, 50, 500),
}


@pytest.fixture(scope="module")
def splits(shared_data):
    return {name: get_task(name).load(os.path.join(shared_data, folder), SplitSizes()) for name, folder in FOLDERS.items()}


@pytest.mark.parametrize("name", list(FOLDERS))
def test_splits_have_the_papers_sizes_and_every_gold_parses_back(splits, name):
    task, split = get_task(name), splits[name]
    assert (len(split.questions), len(split.valid), len(split.test)) == SIZES[name]
    for example in split.questions + split.valid + split.test:
        assert example.gold in task.letters, example
        for official in (False, True):
            assert task.parse_answer(f"... The answer is ({example.gold}).", official) == example.gold
            assert task.is_correct(task.parse_answer(f"The answer is ({example.gold}).", official), example.gold, official)
    for example in split.valid:  # every valid row has a rationale that ends in its own answer
        assert example.rationale.endswith(f"The answer is ({example.gold}).")
        assert task.parse_answer(example.rationale) == task.parse_answer(example.rationale, True) == example.gold
        if name != "openbookqa":  # facts or reason, a sentence, then the exemplars' closing
            facts, _, rest = example.rationale.partition(" So the answer is ")
            assert facts[-1] in ".!?" and rest.endswith(f". The answer is ({example.gold}).")


def test_real_prompts_in_the_papers_format(splits, shared_data):
    strategyqa = get_task("strategyqa").prompt(splits["strategyqa"].test[0].question)
    first_test = copy_rows(shared_data, "strategyqa", "test.jsonl", 1)[0]
    assert strategyqa.endswith(f"\n\nQ: {first_test['question']} Answer Choices are: A)yes; B)no.\nA: ")
    assert strategyqa.startswith("Q: Could a goldfish survive a week in the Sahara desert without water? Answer Choices")

    obqa = get_task("openbookqa").prompt(splits["openbookqa"].questions[0].question)
    assert obqa.endswith(
        "\n\nQ: The sun is responsible for? Answer Choices are: A)puppies learning new tricks; "
        "B)children growing up and getting old; C)flowers wilting in a vase; D)plants sprouting, blooming and wilting.\nA: "
    )
    anli = get_task("anli_a1").prompt(splits["anli_a1"].questions[0].question)
    assert anli.endswith(
        '" Based on this premise, can we conclude the hypothesis "Form and meaning are the only aspects of language '
        'linguistics is concerned with." is true? Answer Choices are: A)yes; B)no; C)impossible to tell.\nA: '
    )
    assert anli.split("\n\nQ: ")[-1].startswith('"Linguistics is the scientific study of language')
    for name in FOLDERS:
        task = get_task(name)
        assert task.prompt("X?").count("The answer is (") == len(task.exemplars) >= 3
        for _, answer in task.exemplars:
            assert answer.endswith(").") and task.parse_answer(answer) in task.letters


@pytest.mark.parametrize(
    "text, paper, official",
    [
        ("So the answer is (b).", "B", "B"),
        ("The answer is B.", "B", None),  # the released code reads only letters in parentheses
        ("The answer is (A). No wait, the answer is (C).", "A", "C"),
        ("The answer is: (D)", "D", "D"),
        ("the answer is yes (A).", None, "A"),  # official: the first parenthesized letter after the phrase
        ("The answer is (E).", None, None),  # no choice of a four-choice task
        ("The answer is a plant.", None, None),
        ("I pick (A).", None, "A"),  # official: with no phrase, the whole text is read
        ("The answer is (A) = (B).", "A", "B"),  # official: after the last '='
        ("The answer is (b). (c) = no", "B", None),
        ("", None, None),
    ],
)
def test_choice_parser_paper_and_official(text, paper, official):
    task = get_task("openbookqa")
    assert task.parse_answer(text) == paper
    assert task.parse_answer(text, official=True) == official


def test_two_choice_task_refuses_a_third_letter():
    assert get_task("strategyqa").parse_answer("The answer is (C).") is None
    assert get_task("anli_a2").parse_answer("The answer is (C).") == "C"


def test_majority_vote_entropy_and_grading_over_letters():
    task = get_task("anli_a1")
    texts = ["The answer is (B).", "The answer is (c).", "no idea", "So the answer is (C).", "The answer is B."]
    answers = [task.parse_answer(t) for t in texts]
    assert answers == ["B", "C", None, "C", "B"]
    table = pa.table({
        C.QUESTION_ID: ["q"] * 5, C.SAMPLE_INDEX: list(range(5)), C.ANSWER: pa.array(answers, pa.string()),
    })  # fmt: skip
    voted = verdicts(table)
    # A 2-2 tie goes to the tied answer seen first: B.
    assert voted[C.MAJORITY_ANSWER].to_pylist() == ["B"] * 5
    assert voted[C.IS_MAJORITY].to_pylist() == [True, False, False, False, True]
    assert answer_entropy(answers, 5) == pytest.approx(math.log(2) / math.log(5))  # two answers, two votes each
    graded = pa.table({C.ANSWER: pa.array(answers, pa.string()), C.GOLD: ["C"] * 5})
    assert answers_correct(graded, official=False).tolist() == [False, True, False, True, False]


# ---- bad rows --------------------------------------------------------------------------------

def copy_rows(shared_data, folder, name, count):
    with open(os.path.join(shared_data, folder, name)) as f:
        return [json.loads(next(f)) for _ in range(count)]


def write(folder, files: dict[str, list]) -> str:
    os.makedirs(folder, exist_ok=True)
    for name, rows in files.items():
        with open(os.path.join(folder, name), "w") as f:
            f.writelines((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)
    return str(folder)


def test_openbookqa_bad_rows_name_file_line_and_fix(tmp_path, shared_data):
    train, test = copy_rows(shared_data, "openbookqa", "train.jsonl", 30), copy_rows(shared_data, "openbookqa", "test.jsonl", 3)
    cases = [
        (lambda r: r.pop("answerKey"), r"line 4: 'answerKey' is None, not one of \['A', 'B', 'C', 'D'\]"),
        (lambda r: r.update(answerKey="E"), r"line 4: 'answerKey' is 'E', not one of"),
        (lambda r: r["question"]["choices"].pop(), r"line 4: 'question.choices' is not a list of 4 choices"),
        (lambda r: r["question"]["choices"][1].update(label="X"), r"line 4: choice 2 has label 'X'"),
        (lambda r: r["question"].update(stem=" "), r"line 4: 'stem' is empty"),
    ]
    for corrupt, message in cases:
        rows = json.loads(json.dumps(train))
        corrupt(rows[3])
        folder = write(tmp_path / "obqa", {"train.jsonl": rows, "test.jsonl": test})
        with pytest.raises(DataError, match=message) as error:
            get_task("openbookqa").load(folder, SplitSizes())
        assert "train.jsonl" in str(error.value) and "task.bad_rows=skip" in str(error.value)


def test_strategyqa_and_anli_bad_rows_and_skip(tmp_path, shared_data):
    train, test = copy_rows(shared_data, "strategyqa", "train.jsonl", 40), copy_rows(shared_data, "strategyqa", "test.jsonl", 3)
    train[2]["answer"] = "yes"
    train[39]["facts"] = ""  # the last row: in the valid set, which needs facts
    folder = write(tmp_path / "sqa", {"train.jsonl": train, "test.jsonl": test + ["{oops"]})
    with pytest.raises(DataError, match=r"train.jsonl, line 3: 'answer' is 'yes', not one of \['false', 'true'\]\. Correct"):
        get_task("strategyqa").load(folder, SplitSizes())
    split = get_task("strategyqa").load(folder, SplitSizes(bad_rows="skip"))
    assert [(os.path.basename(r.file), r.line, r.reason.split(";")[0]) for r in split.rejected] == [
        ("train.jsonl", 3, "'answer' is 'yes', not one of ['false', 'true']."),
        ("train.jsonl", 40, "the row falls in the valid set, whose rationale is written from '{facts} So the answer is {choice}.': 'facts' (a template field) is empty."),
        ("test.jsonl", 4, "not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
    ]
    # A skipped row keeps its place: the valid set is still the last row (of 40), now empty of it.
    assert len(split.questions) == 38 and split.valid == [] and len(split.test) == 3

    dev, test = copy_rows(shared_data, "anli/R1", "dev.jsonl", 20), copy_rows(shared_data, "anli/R1", "test.jsonl", 3)
    dev[0]["label"] = "x"
    folder = write(tmp_path / "anli", {"dev.jsonl": dev, "test.jsonl": test})
    with pytest.raises(DataError, match=r"dev.jsonl, line 1: 'label' is 'x', not one of \['c', 'e', 'n'\]"):
        get_task("anli_a1").load(folder, SplitSizes())
    with pytest.raises(DataError, match=r"task.data_path for anli_a1 and anli_a2 is a round's folder"):
        get_task("anli_a1").load(str(tmp_path), SplitSizes())


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(max_size=60) | st.builds(lambda a, b: f"{a}The answer is {b}", st.text(max_size=20), st.text(max_size=20)),
    gold=st.text(max_size=12) | st.integers() | st.floats() | st.booleans(),
    official=st.booleans(),
)
def test_fuzz_choice_and_text_parsers_and_the_grader(text, gold, official):
    letter = get_task("openbookqa").parse_answer(text, official)
    assert letter is None or letter in "ABCD"
    answer = answers.parse_text(text, official)
    assert answer is None or answers.fold(answer) == answer
    for predicted in (letter, answer, text[:12]):
        assert isinstance(answers.is_correct(predicted, gold, official), bool)
