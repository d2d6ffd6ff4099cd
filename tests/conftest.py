"""Shared fixtures: the real datasets beside the checkout and a tiny model the tests build."""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

# Two test processes share the cores, each with Ray actors whose torch threads assume a core
# each. PyTorch's OpenMP threads spin while they wait, on a core another process needs: a pair
# of tests took 267 s spinning and 213 s waiting passively (docs/benchmarks.md). Set before torch
# loads; the Ray workers and the subprocesses the tests start inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The benchmarks are the repository's scripts, not the package's modules: their tests import
# them as they import each other, from their folder.
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")


@pytest.fixture(scope="session")
def shared_data() -> str:
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"the shared datasets are not at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A real (tiny, briefly pre-trained) Llama model directory, built once per test session."""
    from dsw_ray.config import ToyModelConfig
    from dsw_ray.toy import build_toy_model

    path = tmp_path_factory.mktemp("models") / "tiny"
    config = ToyModelConfig(hidden_size=32, num_layers=2, num_heads=2, pretrain_examples=300, steps=30, batch_size=8)
    return build_toy_model(str(path), config)


@pytest.fixture(scope="module")
def ray_session():
    """A private local Ray (2 CPUs) for one module's in-process jobs, started as a job without a
    cluster starts it."""
    import ray

    from dsw_ray.ray_session import start_local_ray

    start_local_ray(2)
    yield
    ray.shutdown()


def toy_path() -> str:
    from dsw_ray.toy import QUICKSTART_TOY

    return os.path.join(ROOT, QUICKSTART_TOY)


@pytest.fixture(scope="session")
def toy_model() -> str:
    """The quickstart's base model (2 to 3 minutes to build on 2 cores): good enough to give
    parsable answers. Built where the quickstart builds it, so that either reuses the other's
    build; if the session started its build in the background, this waits for it."""
    from dsw_ray.toy import build_quickstart_toy

    return build_quickstart_toy(toy_path())


# The modules that take longest (--durations), longest first. The scheduler hands whole modules
# to the test processes in collection order, each process holding one or two ahead: short
# modules at the end let both processes finish together.
LONGEST_FIRST = ("test_terminal.py", "test_vllm_cpu.py", "test_round.py", "test_job_submit.py", "test_real_model.py",
                 "test_train_engines.py", "test_gpu_proof.py", "test_faults.py", "test_bench.py", "test_choice_round.py",
                 "test_train_faults.py", "test_train_multinode.py")  # fmt: skip
BACKGROUND_BUILD: list = []


def pytest_collection_modifyitems(config, items):
    """First the long modules that need no toy, then the long ones that do, then the short
    ones. Meanwhile one test process builds the toy in the background, so that no process sits
    waiting on the toy's build lock (164 s of a core in earlier suites)."""
    from dsw_ray.toy import MARKER

    toy_modules = {item.path for item in items if "toy_model" in getattr(item, "fixturenames", ())}

    def rank(item):
        name = item.path.name
        if name not in LONGEST_FIRST:
            return 2, 0
        return int(item.path in toy_modules), LONGEST_FIRST.index(name)

    items.sort(key=rank)  # stable: the tests of a module keep their order
    worker = getattr(config, "workerinput", {}).get("workerid", "gw0")
    built = os.path.exists(os.path.join(toy_path(), MARKER))
    if toy_modules and worker == "gw0" and not built and not config.option.collectonly:
        build = f"from dsw_ray.toy import build_quickstart_toy; build_quickstart_toy({toy_path()!r})"
        BACKGROUND_BUILD.append(subprocess.Popen([sys.executable, "-c", build], cwd=ROOT, stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL))  # fmt: skip


def pytest_sessionfinish(session, exitstatus):
    """Wait for the background build (the other test process may still need it), unless the
    session was stopped (Ctrl-C, -x): then stop it. An interrupted build never looks finished
    (dsw_ray.toy builds in a staging folder)."""
    for process in BACKGROUND_BUILD:
        if exitstatus == pytest.ExitCode.INTERRUPTED or session.shouldstop or session.shouldfail:
            process.terminate()
        process.wait()


def build_reward_model(path, base_model: str, num_labels: int = 1) -> str:
    """A randomly initialized Llama sequence classifier with the tiny model's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    config = AutoConfig.from_pretrained(base_model)
    config.num_labels = num_labels
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_model).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_reward_model(tmp_path_factory, tiny_model) -> str:
    return build_reward_model(tmp_path_factory.mktemp("models") / "reward", tiny_model)


@pytest.fixture(scope="session")
def two_label_reward_model(tmp_path_factory, tiny_model) -> str:
    return build_reward_model(tmp_path_factory.mktemp("models") / "reward2", tiny_model, num_labels=2)


def small_round(model_path: str, run_dir, **sections) -> dict:
    """A job dict for one quick IWSI round on arith through the CLI (12 questions, m = 2);
    ``sections`` replace whole sections, e.g. ``train={...}``."""
    return {
        "run_dir": str(run_dir),
        "methods": ["iwsi"],
        "task": {"name": "arith", "num_questions": 12, "num_valid": 8, "num_test": 10},
        "model": {"path": model_path},
        "generate": {"samples_per_question": 2, "temperature": 0.8, "max_new_tokens": 40, "batch_size": 12},
        "evaluate": {"max_new_tokens": 40, "batch_size": 10},
        **sections,
    }


def read_scalars(path: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard event file (TFRecord framing, tensorboardX's protobuf)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    with open(path, "rb") as f:
        while header := f.read(12):  # length (8 bytes), its CRC (4)
            (length,) = struct.unpack("<Q", header[:8])
            event = event_pb2.Event.FromString(f.read(length))
            f.read(4)  # the record's CRC
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars
