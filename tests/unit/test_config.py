import glob
import os

import pytest
import yaml

from dsw_ray import ConfigError, load_job
from dsw_ray.filters import METHODS
from dsw_ray.study import load_study
from dsw_ray.suite import load_suite
from dsw_ray.resources import pool_cpus, training_cpus
from tests.conftest import ROOT

MINIMAL = "run_dir: runs/x\ntask: {name: arith}\nmodel: {path: m}\n"


def write(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_and_overrides(tmp_path):
    job = load_job(write(tmp_path, MINIMAL), ["train.epochs=3", "filter.keep_fraction=0.5", "train.lora={r: 4}"])
    assert job.train.epochs == 3 and job.filter.keep_fraction == 0.5 and job.train.lora.r == 4
    assert job.generate.samples_per_question == 4 and job.train.zero_stage == 2 and job.rounds == 1


def test_official_semantics_fill_the_authors_settings_the_job_leaves_out(tmp_path, shared_data):
    from dsw_ray.config import OFFICIAL_DEFAULTS

    gsm8k = f"run_dir: runs/x\ntask: {{name: gsm8k, data_path: {shared_data}/gsm8k}}\nmodel: {{path: m}}\n"
    official = load_job(write(tmp_path, gsm8k), ["semantics=official", "train.epochs=1", "generate.temperature=0.9"])
    assert official.task.exemplars == "authors" and official.filter.keep_fraction == 0.79
    assert (official.train.lr_schedule, official.train.warmup_fraction, official.train.max_grad_norm) == ("cosine", 0.0, 0.0)
    assert official.train.max_length == 400 and official.train.learning_rate == 3e-4
    assert official.train.epochs == 1 and official.generate.temperature == 0.9, "what the job sets wins"
    assert official.filter.entropy_threshold == OFFICIAL_DEFAULTS["filter"]["entropy_threshold"]
    paper = load_job(write(tmp_path, gsm8k))
    assert paper.task.exemplars == "project" and paper.filter.keep_fraction == 0.8 and paper.train.max_grad_norm == 1.0
    # A task the authors wrote no prompt for keeps its own exemplars under official semantics.
    assert load_job(write(tmp_path, MINIMAL), ["semantics=official"]).task.exemplars == "project"
    with pytest.raises(ConfigError, match="authors' released prompt is known for"):
        load_job(write(tmp_path, MINIMAL), ["task.exemplars=authors"])


@pytest.mark.parametrize(
    "override, field",
    [
        ("filter.keep_fraction=0", "filter.keep_fraction"),
        ("filter.keep_fraction=1.5", "filter.keep_fraction"),
        ("generate.samples_per_question=0", "generate.samples_per_question"),
        ("train.epochs=two", "train.epochs"),
        ("task.name=mnist", "task.name"),
        ("train.zero_stage=4", "train.zero_stage"),
        ("train.epoch=2", "train.epoch"),
    ],
)
def test_errors_name_the_field_and_the_file(tmp_path, override, field):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as error:
        load_job(path, [override])
    assert field in str(error.value) and path in str(error.value)


def test_dataset_tasks_need_an_existing_path(tmp_path):
    path = write(tmp_path, MINIMAL.replace("arith", "gsm8k"))
    with pytest.raises(ConfigError, match="task.data_path"):
        load_job(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_job(path, [f"task.data_path={tmp_path}/missing"])


def test_malformed_inputs(tmp_path):
    with pytest.raises(ConfigError, match="no such job file"):
        load_job(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_job(write(tmp_path, "task: [unclosed"))
    with pytest.raises(ConfigError, match="key=value"):
        load_job(write(tmp_path, MINIMAL), ["train.epochs"])


def local_data(job_file: str, shared_data: str, reward_model: str) -> list[str]:
    """Cluster jobs read data and models from the shared volume, /mnt/dsw; here the same data
    files are in ../shared (and a folder stands in for the reward model)."""
    with open(job_file) as f:
        data_path = yaml.safe_load(f)["task"].get("data_path")
    overrides = [f"reward.model_path={reward_model}"]
    if data_path and data_path.startswith("/mnt/dsw/data/"):
        overrides.append(f"task.data_path={os.path.join(shared_data, os.path.relpath(data_path, '/mnt/dsw/data'))}")
    return overrides


@pytest.mark.parametrize("job_file", sorted(glob.glob(os.path.join(ROOT, "jobs", "*.yaml"))))
def test_every_shipped_job_validates(job_file, shared_data, tmp_path):
    name = os.path.relpath(job_file, ROOT)
    with open(job_file) as f:
        command = f.readline()
    local = command.startswith((f"# dsw-ray run {name}", f"# dsw-ray sweep {name}"))
    runs = [f"-- python -m dsw_ray {verb} {name}" for verb in ("run", "table", "sweep")]
    cluster = command.startswith("# ray job submit") and command.rstrip().endswith(tuple(runs))
    assert local or cluster, "a job file opens with the command that runs it"
    cwd = os.getcwd()
    os.chdir(ROOT)  # job files give paths relative to the project root
    try:
        if command.rstrip().endswith(runs[1]):  # a suite: every job it runs, as it runs them
            suite, jobs = load_suite(job_file, per_job=lambda job: local_data(job, shared_data, str(tmp_path)))
            assert all(job.methods == suite.methods for job in jobs.values())
        elif " sweep " in command:  # a study: every point's job
            with open(job_file) as f:
                its_job = os.path.join(os.path.dirname(job_file), yaml.safe_load(f)["job"])
            _, points = load_study(job_file, local_data(its_job, shared_data, str(tmp_path)))
            assert len({p.job.run_dir for p in points}) == len(points) > 1
        else:
            load_job(job_file, local_data(job_file, shared_data, str(tmp_path)))
    finally:
        os.chdir(cwd)


def test_table1_suite_runs_every_dataset_and_method():
    with open(os.path.join(ROOT, "jobs", "table1.yaml")) as f:
        suite = yaml.safe_load(f)
    tasks = set()
    for job_file in suite["jobs"].values():
        with open(os.path.join(ROOT, job_file)) as f:
            tasks.add(yaml.safe_load(f)["task"]["name"])
    assert tasks == {"gsm8k", "svamp", "anli_a1", "anli_a2", "openbookqa", "strategyqa"}
    assert set(suite["methods"]) == set(METHODS) - {"none"}  # Table 1's eight methods (none is an ablation)


def test_pools_leave_cpu_for_ray_data():
    # A Ray Data task asks for a whole CPU: pools leave one free.
    assert pool_cpus(1, None, 2, "generate") == 1.0
    assert pool_cpus(2, None, 2, "generate") == 0.5
    assert pool_cpus(2, 0.5, 2, "generate") == 0.5
    with pytest.raises(ConfigError, match="would hang"):
        pool_cpus(2, 0.75, 2, "generate")


def test_training_workers_take_whole_cpus_that_fit_on_nodes():
    # No Ray Data runs beside training: one worker takes the whole machine.
    assert training_cpus(1, [2.0]) == 2.0
    assert training_cpus(2, [2.0]) == 1.0
    assert training_cpus(2, [2.0, 2.0]) == 2.0
    # Three workers on two 2-CPU nodes: two CPUs each would leave the third nowhere to go.
    assert training_cpus(3, [2.0, 2.0]) == 1.0
    assert training_cpus(2, [1.0, 3.0]) == 1.0
    assert training_cpus(1, [1.0, 3.0]) == 3.0
    # More workers than CPUs share them as a pool does.
    assert training_cpus(4, [2.0]) == pool_cpus(4, None, 2, "train")


def test_config_errors_are_one_paragraph_and_suggest_misspelt_keys(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as error:
        load_job(path, ["train.epoch=2", "generate.vllm.tensor_parallel=2", "filter.keep_fraction=2", "colour=red"])
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: the job config is not valid: ")
    assert "train.epoch: Extra inputs are not permitted (did you mean epochs?)" in message
    assert "generate.vllm.tensor_parallel: Extra inputs are not permitted (did you mean tensor_parallel_size?)" in message
    assert "colour: Extra inputs are not permitted (not a field of this section)" in message
    assert "filter.keep_fraction: Input should be less than or equal to 1" in message


def test_a_key_given_twice_is_an_error_not_a_silent_merge(tmp_path):
    twice = MINIMAL + "train:\n  epochs: 2\ntrain:\n  micro_batch_size: 2\n"
    with pytest.raises(ConfigError, match=r"(?s)the key 'train' is given twice in one mapping.*line 6"):
        load_job(write(tmp_path, twice))
    with pytest.raises(ConfigError, match="the key 'r' is given twice"):
        load_job(write(tmp_path, MINIMAL), ["train.lora={r: 4, r: 8}"])


def test_an_override_keeps_a_hash_that_yaml_would_read_as_a_comment(tmp_path):
    assert load_job(write(tmp_path, MINIMAL), ["run_dir=runs/a #1"]).run_dir == "runs/a #1"
    assert load_job(write(tmp_path, MINIMAL), ["run_dir=runs/a#1"]).run_dir == "runs/a#1"


def test_a_model_folder_is_known_by_what_it_holds(tmp_path):
    """New weights at the same path (same size, new bytes) or a changed config change the
    identity the stage fingerprints include; an untouched folder keeps it."""
    import time

    from dsw_ray.models import SMALL_FILE, model_identity

    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "model.safetensors").write_bytes(b"\0" * (SMALL_FILE + 1))
    first = model_identity(str(tmp_path))
    assert model_identity(str(tmp_path)) == first
    time.sleep(0.01)
    (tmp_path / "model.safetensors").write_bytes(b"\1" * (SMALL_FILE + 1))
    second = model_identity(str(tmp_path))
    assert second != first
    (tmp_path / "config.json").write_text('{"a": 2}')
    assert model_identity(str(tmp_path)) != second
    assert model_identity("s3://bucket/model") == ["s3://bucket/model"]
