"""What a user's terminal shows for a real job: our stage lines, progress bars and the table in
a pseudo-terminal; plain lines through a pipe; Ray's and the libraries' output only in the run's
log; a worker's failure as one paragraph naming the log; the fine-tune's TensorBoard curves."""

import glob
import json
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import ROOT, read_scalars, small_round

pytestmark = pytest.mark.ray

TIMEOUT = 600
# Lines only Ray, Ray Data, Ray Train, DeepSpeed or transformers write.
FOREIGN = (
    "streaming_executor", "Started a local Ray", "core_worker", "(raylet)", "TrainController", "RayTrainWorker",
    "PreemptionWatcher", "will hang", "TrainingReport", "Checkpoint", "DeepSpeed", "real_accelerator",
    "Data sink", "Execution plan", " INFO ", " WARNING ",
)  # fmt: skip


def cli_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a private local Ray


def run_in_terminal(args: list[str]) -> tuple[int, str]:
    """``python -m dsw_ray ARGS`` with a pseudo-terminal (160 x 50) as stdin, stdout and stderr,
    as a user's shell runs it; returns the exit status and everything the terminal received."""
    import fcntl
    import pty
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "dsw_ray", *args], cwd=ROOT, env=cli_env(), stdin=slave, stdout=slave, stderr=slave,
        start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    received, deadline = bytearray(), time.time() + TIMEOUT
    try:
        while time.time() < deadline:
            if select.select([master], [], [], 1)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every holder of the terminal has closed it
                    break
                if not chunk:
                    break
                received += chunk
            elif process.poll() is not None:
                break
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    return process.returncode, received.decode(errors="replace")


def run_in_pipe(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dsw_ray", *args], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
        timeout=TIMEOUT,
    )  # fmt: skip


def write_job(path, model: str, run_dir) -> str:
    """One round of the ``none`` method (it keeps every candidate, so the tiny model fine-tunes),
    small batches so that the bars advance more than once."""
    job = small_round(
        model, run_dir,
        methods=["none"],
        generate={"samples_per_question": 2, "temperature": 0.8, "max_new_tokens": 40, "batch_size": 4},
        evaluate={"max_new_tokens": 40, "batch_size": 4},
        train={"epochs": 2, "micro_batch_size": 4},
        ray={"num_cpus": 2},
    )  # fmt: skip
    path.write_text(yaml.safe_dump(job))
    return str(path)


def interrupted(job: str, number: int, to_group: bool) -> tuple[int, str]:
    """``dsw-ray run JOB`` through a pipe, sent signal ``number`` two seconds into its generate
    stage: to its process group, as Ctrl-C in a terminal does, or to it alone, as Kubernetes
    and ``kill`` do. Its exit status and output."""
    from tests.integration.processes import kill_session

    driver = subprocess.Popen(
        [sys.executable, "-m", "dsw_ray", "run", job], cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        seen = []
        for line in driver.stdout:
            seen.append(line)
            if "round-1/generate: started" in line:
                time.sleep(2)  # into the stage's work
                (os.killpg if to_group else os.kill)(driver.pid, number)
                break
        seen += driver.stdout.readlines()
        return driver.wait(timeout=120), "".join(seen)
    finally:
        kill_session(driver)


@pytest.fixture(scope="module")
def job_runs(tiny_model, tmp_path_factory):
    """The job stopped by Ctrl-C, then by SIGTERM, in its generate stage; then run in a terminal,
    where it resumes and finishes; then its evaluations again (``--from evaluate``) through a pipe."""
    import signal

    where = tmp_path_factory.mktemp("terminal")
    job = write_job(where / "job.yaml", tiny_model, where / "run")
    stops = {"ctrl_c": interrupted(job, signal.SIGINT, True), "sigterm": interrupted(job, signal.SIGTERM, False)}
    partial = (where / "run" / "round-1" / "generate.partial").is_dir()
    status, terminal = run_in_terminal(["run", job])
    (where / "terminal.txt").write_text(terminal)  # what a user saw, for a failing assertion's reader
    assert status == 0, terminal[-5000:]
    piped = run_in_pipe(["run", job, "--from", "evaluate"])
    assert piped.returncode == 0, piped.stderr[-5000:]
    return {"run_dir": str(where / "run"), "terminal": terminal, "piped": piped, "stops": stops, "partial": partial}


def test_ctrl_c_and_sigterm_stop_with_one_line_and_the_rerun_resumes(job_runs):
    """Ctrl-C and SIGTERM each stop the run in its stage with one line, exit 130 and 143, no
    traceback on the terminal (the log has it); the same command then resumes and finishes."""
    for name, expected in (("ctrl_c", 130), ("sigterm", 143)):
        status, output = job_runs["stops"][name]
        assert status == expected, output[-3000:]
        last = output.rstrip().splitlines()[-1]
        assert last == "dsw-ray: interrupted in round-1/generate; rerun the same command to resume.", output[-3000:]
        assert "Traceback" not in output and "KeyboardInterrupt" not in output
    assert job_runs["partial"], "the interrupted stage was left unfinished, not marked done"
    with open(os.path.join(job_runs["run_dir"], "dsw-ray.log")) as f:
        log = f.read()
    # (Both signals are raised as KeyboardInterrupt: the exit status comes from the signal the
    # handler saw.)
    assert log.count("dsw_ray.errors.Interrupted: interrupted in round-1/generate") == 2
    assert "round-1/generate: started (an earlier run stopped before it finished)" in job_runs["terminal"]


# A round's models are evaluated in one pass: its stages' done lines say so.
ONE_PASS = r"(?: \(one pass for \d+ stages\))?"


def frames(text: str, stage: str) -> list[tuple[int, int]]:
    """The ``done/total`` of every redraw of a stage's bar."""
    return [(int(n), int(total)) for n, total in re.findall(rf"{re.escape(stage)}:\s+\d+%\|[^|]*\| (\d+)/(\d+) ", text)]


def test_the_terminal_shows_our_stages_bars_and_table_only(job_runs):
    terminal = job_runs["terminal"]
    lines = [line.strip() for line in re.split(r"[\r\n]", terminal) if line.strip()]
    for foreign in FOREIGN:
        assert not [line for line in lines if foreign in line], f"{foreign!r} reached the terminal:\n{terminal[-3000:]}"
    for stage, counts, why in (
        ("round-1/generate", "12 questions in, 24 candidates out", "an earlier run stopped before it finished"),
        ("round-1/none/filter", "24 candidates in, 24 kept out", "not run yet"),
        ("base/evaluate", "10 questions in, 10 answers out", "not run yet"),
    ):
        assert re.search(rf"\d\d:\d\d:\d\d {stage}: started \({why}\)", terminal)
        assert re.search(rf"{stage}: done in [\d.]+ s{ONE_PASS}, {counts}", terminal), terminal[-3000:]
    assert re.search(r"round-1/none/train: done in [\d.]+ s, 24 samples in, 12 optimizer steps, final loss [\d.]+", terminal)
    assert "method  round  kept" in terminal and f"run directory: {job_runs['run_dir']}" in terminal

    # The bars redraw as the work advances, in each stage's own units, with rate and time left,
    # and end at the stage's full count.
    train = frames(terminal, "round-1/none/train")
    assert {total for _, total in train} == {12} and {0, 12} <= {n for n, _ in train}, train
    assert re.search(r"round-1/none/train: .*(?:steps/s|s/ steps), loss=[\d.]+\]", terminal)
    generate = frames(terminal, "round-1/generate")
    assert {total for _, total in generate} == {12} and {0, 12} <= {n for n, _ in generate}, generate
    # tqdm shows a rate under one a second as seconds per unit.
    assert re.search(r"round-1/generate: .*<[\d:?]+, +(?:[\d.?]+ questions/s|[\d.]+s/ questions), candidates=\d+\]", terminal)


def test_a_pipe_gets_plain_progress_lines_and_the_log_gets_everything_else(job_runs):
    piped, run_dir = job_runs["piped"], job_runs["run_dir"]
    output = piped.stdout + piped.stderr
    assert "\r" not in output and "\x1b[" not in output, "no redraws, no colours"
    assert not [line for line in output.splitlines() if any(foreign in line for foreign in FOREIGN)], output
    # Whether a stage this small logs a progress line before its done line depends on when its
    # batches land (tests/unit/test_progress.py checks the lines); its done line it always logs.
    assert re.search(rf"round-1/none/evaluate: done in [\d.]+ s{ONE_PASS}, 10 questions in, 10 answers out", piped.stderr)
    assert "round-1/generate: skipped, done already" in piped.stderr
    assert "base/evaluate: started (rerun as asked (--from))" in piped.stderr and "none/train: skipped" in piped.stderr
    assert "method  round  kept" in piped.stdout and "evaluate" not in piped.stdout

    with open(os.path.join(run_dir, "dsw-ray.log")) as f:
        log = f.read()
    assert log.count("==== dsw-ray run") == 4, "each run appends its own section (two interrupted, two whole)"
    assert "Started a local Ray instance" in log and "streaming_executor" in log  # Ray's and Ray Data's
    assert "RayTrainWorker" in log and "DeepSpeed" in log  # what the training workers printed
    assert "round-1/none/train: done in" in log  # our lines too, for context
    assert "PreemptionWatcher" not in log, "a private Ray's fine-tune starts no preemption watcher"
    # Every worker ran our set-up hook (inherited, not from a runtime environment): Ray Train's
    # placement-group cleaner, which cannot reach the state API without the dashboard, is quiet.
    assert "Failed to query Ray Train Controller" not in log


def test_the_fine_tune_curves_are_tensorboard_event_files(job_runs):
    run_dir = job_runs["run_dir"]
    (events,) = glob.glob(os.path.join(run_dir, "tensorboard", "round-1", "none", "events.out.tfevents.*"))
    scalars = read_scalars(events)
    with open(os.path.join(run_dir, "round-1", "none", "train", "model", "loss_history.json")) as f:
        history = json.load(f)
    # 24 samples, micro batch size 4, accumulation 1: one optimizer step per micro batch, 6 per epoch
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, 13))
    assert [loss for _, loss in scalars["train/loss"]] == pytest.approx([e["loss"] for e in history["history"]], rel=1e-6)
    assert [lr for _, lr in scalars["train/learning_rate"]] == pytest.approx(
        [e["learning_rate"] for e in history["history"]], rel=1e-6
    )
    assert [step for step, _ in scalars["heldout/loss"]] == [6, 12]
    assert [loss for _, loss in scalars["heldout/loss"]] == pytest.approx(
        [e["loss"] for e in history["heldout_history"]], rel=1e-6
    )


def test_a_worker_failure_is_one_paragraph_naming_the_stage_and_the_log(tiny_model, tmp_path):
    """A model whose weights file is damaged passes the check before Ray (it reads config.json
    only) and breaks inside the generation actor, the first to load it."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    weights = broken / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    result = run_in_pipe(["run", write_job(tmp_path / "job.yaml", str(broken), tmp_path / "run")])
    assert result.returncode == 1, result.stderr[-3000:]
    log = tmp_path / "run" / "dsw-ray.log"
    message = result.stderr[result.stderr.index("dsw-ray:") :]
    assert message.splitlines() == [
        f"dsw-ray: round-1/generate failed: cannot load '{broken}' as a causal LM from safetensors: "
        + message.splitlines()[0].split("from safetensors: ", 1)[1],
        f"The full trace is in {log}",
    ]
    assert "deserializing header" in message and "Traceback" not in result.stderr
    trace = log.read_text()
    assert "Traceback" in trace and "SafetensorError" in trace and "StageFailed: round-1/generate failed" in trace

