"""The numeric tasks: tasks/numeric.py's parser and grader (the paper's and the authors'), the gsm8k,
svamp and arith loaders and prompts, and their bad rows."""

import json

import pytest

from dsw_ray import get_task
from dsw_ray.errors import DataError
from dsw_ray.tasks import SplitSizes, gsm8k, svamp
from dsw_ray.tasks.numeric import normalize_number


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3 + 4 = 7. The answer is 7.", "7"),
        ("So 1,000 in all. The answer is 1,000.", "1000"),
        ("The answer is $2.50.", "2.5"),
        ("The answer is -3.", "-3"),
        ("the answer is: 12", "12"),
        ("The answer is 5. Then the answer is 6.", "5"),
        ("No final answer here, 42.", None),
        ("The answer is unclear. Maybe 4.", None),
        ("", None),
    ],
)
def test_parse_answer(text, expected):
    assert get_task("gsm8k").parse_answer(text) == expected


@pytest.mark.parametrize(
    "predicted, gold, expected",
    [("1000", "1,000", True), ("2.5", "2", False), ("2", 2.0, True), ("51", 51.0, True), (None, "3", False),
     ("0.50", ".5", True), ("-0", "0", True), ("7", "seven", False)],
)
def test_is_correct_compares_numbers(predicted, gold, expected):
    assert get_task("svamp").is_correct(predicted, gold) is expected


@pytest.mark.parametrize(
    "predicted, gold, expected",
    [("2.5", "2", True), ("2.9", "2", True), ("-2.5", "-2", True), ("3", "2.99", False), ("1,000.7", "1000", True),
     ("1e400", "1", False), (None, "3", False)],
)
def test_official_semantics_compare_as_integers(predicted, gold, expected):
    """The authors' code compares int(float(x)): truncation toward zero."""
    assert get_task("gsm8k").is_correct(predicted, gold, official=True) is expected


def test_official_parse_truncates_and_votes_agree():
    task = get_task("gsm8k")
    assert task.parse_answer("The answer is 7.9.", official=True) == "7"
    assert task.parse_answer("The answer is -0.5.", official=True) == "0"
    assert task.parse_answer("No answer.", official=True) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is 72.", "72"),
        ("The answer is 5. Later the answer is 1,200.", "1200"),  # the last phrase
        ("She pays 3 * 4 = 12 dollars. The answer is 2 + 3 = 5 dollars.", "5"),  # after the last '='
        ("She pays 3 * 4 = 12 dollars in all.", "12"),  # no phrase: the whole text's last '='
        ("She had 3 apples and ate 1.", "3"),  # no phrase, no '=': the first number
        ("The answer is -4.", "4"),  # the sign is lost, as in the authors' regex
        ("The answer is $1,000.50.", "1000"),
        ("The answer is " + "9" * 31 + ".", None),  # longer than 30 characters
        ("The answer is unknown.", None),
    ],
)
def test_official_parser_is_the_authors_derive_num_from_output(text, expected):
    assert get_task("gsm8k").parse_answer(text, official=True) == expected


def test_prompt_ends_with_the_question_and_exemplars_end_in_the_answer():
    for name in ("arith", "gsm8k", "svamp"):
        task = get_task(name)
        prompt = task.prompt("How many?")
        assert prompt.endswith("Q: How many?\nA: ")
        for question, answer in task.exemplars:
            assert answer.startswith(answer.strip()) and "The answer is" in answer
            assert task.parse_answer(answer) is not None
            assert f"Q: {question}\nA: {answer}\n\n" in prompt


def test_every_gsm8k_gold_answer_parses_back(shared_data):
    splits = gsm8k.load(f"{shared_data}/gsm8k", SplitSizes())
    assert (len(splits.questions), len(splits.valid), len(splits.test)) == (7099, 374, 1319)
    task = get_task("gsm8k")
    for example in splits.questions + splits.valid + splits.test:
        # The rewritten rationale ends in "The answer is N." and parses back to the gold answer.
        assert task.is_correct(task.parse_answer(example.rationale), example.gold), example
        assert "<<" not in example.rationale and "####" not in example.rationale


def test_every_svamp_gold_answer_parses_back(shared_data):
    splits = svamp.load(f"{shared_data}/svamp/SVAMP.json", SplitSizes())
    assert len(splits.test) == 300 and len(splits.questions) + len(splits.valid) == 700
    task = get_task("svamp")
    for example in splits.valid:
        assert task.is_correct(task.parse_answer(example.rationale), example.gold), example
    raw = json.load(open(f"{shared_data}/svamp/SVAMP.json"))
    assert all(task.is_correct(task.parse_answer(f"The answer is {row['Answer']}."), row["Answer"]) for row in raw)


def test_arith_splits_are_seeded_and_disjoint():
    task = get_task("arith")
    first, again = task.load(None, SplitSizes(50, 10, 20, seed=3)), task.load(None, SplitSizes(50, 10, 20, seed=3))
    assert first == again
    texts = [{e.question for e in part} for part in (first.questions, first.valid, first.test)]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    for example in first.valid:
        assert task.is_correct(task.parse_answer(example.rationale), example.gold)
    assert task.load(None, SplitSizes(50, 10, 20, seed=4)).questions != first.questions


def test_gsm8k_bad_rows_name_the_file_and_line(tmp_path):
    (tmp_path / "test.jsonl").write_text(json.dumps({"question": "q", "answer": "1\n#### 1"}) + "\n")
    cases = {
        "{not json": "line 2: not valid JSON",
        json.dumps({"question": "", "answer": "#### 1"}): "'question' is empty",
        json.dumps({"question": "q", "answer": "no marker"}): "no final '#### N' line",
        json.dumps({"question": "q", "answer": "#### many"}): "is not a number",
    }
    for line, message in cases.items():
        (tmp_path / "train.jsonl").write_text(json.dumps({"question": "q", "answer": "#### 2"}) + "\n" + line + "\n")
        with pytest.raises(DataError, match=message) as error:
            gsm8k.load(str(tmp_path), SplitSizes())
        assert "train.jsonl" in str(error.value)


def test_svamp_duplicate_ids_are_rejected(tmp_path):
    rows = [{"ID": f"r{i}", "Body": "b", "Question": f"q{i}?", "Equation": "( 1.0 + 1.0 )", "Answer": 2.0} for i in range(310)]
    rows[5]["ID"] = "r1"
    (tmp_path / "SVAMP.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"row 6 \(line 1\): duplicate ID 'r1' \(also row 2\)"):
        svamp.load(str(tmp_path), SplitSizes())


def test_normalize_number():
    assert normalize_number("1,000.50") == "1000.5"
    assert normalize_number(51.0) == "51"
    assert normalize_number("nan") is None and normalize_number("inf") is None


def test_a_careless_answer_adds_every_amount_and_is_right_only_for_two_gains():
    from dsw_ray.tasks import arith

    task, checked = get_task("arith"), 0
    for example in arith.generate_examples(seed=3, count=300, prefix="q", two_step_share=0.5):
        answer = arith.careless(example)
        if "and then" not in example.question:
            assert answer == example.rationale  # one step: nothing to be careless about
            continue
        amounts = [int(n) for _, n in arith.MOVE.findall(example.question)]
        assert answer.count("=") == 1 and task.parse_answer(answer) == str(sum(amounts))
        assert task.is_correct(task.parse_answer(answer), example.gold) is ("gives away" not in example.question)
        checked += 1
    assert checked > 100


def test_the_toy_corpus_answers_a_share_of_two_step_problems_carelessly():
    from dsw_ray.tasks import arith
    from dsw_ray.config import ToyModelConfig
    from dsw_ray.toy import corpus

    config = ToyModelConfig(pretrain_examples=3000, careless_share=0.3)
    careful = corpus(config.model_copy(update={"careless_share": 0.0}), set())
    careless = corpus(config, set())
    two_step = [(a, b) for a, b in zip(careful, careless) if "and then" in a]
    changed = sum(a != b for a, b in two_step)
    assert 0.25 < changed / len(two_step) < 0.35
    # The problems are the same; only two-step answers change, and only to the careless form.
    for a, b in zip(careful, careless):
        assert a.split("\nA: ")[0] == b.split("\nA: ")[0]
        if a != b:
            question = a.split("\nA: ")[0].removeprefix("Q: ")
            assert "and then" in a and b.split("\nA: ")[1].strip() == arith.careless(
                arith.Example("x", question, "0", "")
            )
