"""``dsw-ray run JOB.yaml [key=value ...] [--from STAGE]``: run a job and print its accuracy table;
``dsw-ray table SUITE.yaml [key=value ...]``: run several jobs (one per dataset) and print one
accuracy table across them; ``dsw-ray sweep STUDY.yaml [key=value ...]``: run a job at every point
of a grid and print the study's scaling report; ``dsw-ray model import SOURCE OUT``: a GGUF model as a Hugging Face
folder; ``dsw-ray status RUN_DIR``: where a run stands; ``dsw-ray bench``: the benchmarks of the
clone it runs from (``benchmarks/``)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import time

from dsw_ray.errors import Interrupted, StageFailed, UserError, on_signal, stop_requested


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dsw-ray", description="Importance-weighted self-improvement on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a job file")
    run.add_argument("job", help="job YAML file, e.g. jobs/quickstart.yaml")
    run.add_argument("overrides", nargs="*", help="key=value settings, e.g. train.epochs=2")
    run.add_argument(
        "--from", dest="rerun_from", metavar="STAGE", help="rerun STAGE and every stage after it, even where finished"
    )
    sweep = commands.add_parser("sweep", help="run a study: a job at every point of a grid, then its scaling report")
    sweep.add_argument("study", help="study YAML file, e.g. jobs/study_quickstart_scaling.yaml")
    sweep.add_argument("overrides", nargs="*", help="key=value settings for every point, e.g. train.epochs=2")
    bench = commands.add_parser("bench", help="measure each stage beside the authors' way and the machine's limit")
    bench.add_argument("--size", choices=["tiny", "full"], default="full", help="tiny: every section on a few rows (CI)")
    bench.add_argument("--out", help="JSON results (default: docs/bench.json for full)")
    bench.add_argument("--plot", help="PNG of the scaling curves (default: docs/bench_scaling.png for full)")
    bench.add_argument("--model", default=".cache/dsw-ray/toy-arith", help="the quickstart's toy model (built if missing)")
    bench.add_argument(
        "--gpu-proof", default="docs/gpu_proof.json",
        help="a GPU proof run's JSON (benchmarks/gpu_proof.py): the GPU projection uses its rates if the file exists",
    )
    bench.add_argument(
        "--only-round", action="store_true", help="only the quickstart's round, split into work and fixed costs"
    )
    bench.add_argument(
        "--vllm", action="store_true",
        help="only the vLLM stages against raw vllm.LLM and the transformers backend (default out: docs/bench_vllm.json)",
    )  # fmt: skip
    bench.add_argument("--vllm-questions", type=int, default=64, help="with --vllm: questions to generate for")
    bench.add_argument("--vllm-samples", type=int, default=4, help="with --vllm: candidates per question")
    bench.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    table = commands.add_parser("table", help="run every job of a suite file and print one table across datasets")
    table.add_argument("suite", help="suite YAML file, e.g. jobs/table1.yaml")
    table.add_argument("overrides", nargs="*", help="key=value settings for every job, e.g. generate.actors=4")
    table.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    model = commands.add_parser("model", help="bring a model in")
    model_commands = model.add_subparsers(dest="model_command", required=True)
    imports = model_commands.add_parser(
        "import", help="convert a GGUF file into the Hugging Face folder every stage loads (once per file content)"
    )
    imports.add_argument("source", help="a .gguf file, or PACKAGE/FILE.gguf of an installed package")
    imports.add_argument("out", help="the folder to write (a job's model.path)")
    status = commands.add_parser("status", help="each stage of a run directory: done or unfinished, rows, times")
    status.add_argument("run_dir", help="the job's run_dir, e.g. runs/quickstart")
    for runs in (run, sweep):
        runs.add_argument("-q", "--quiet", action="store_true", help="show warnings and the table only, no progress")
        runs.add_argument(
            "-v", "--verbose", action="store_true",
            help="show Ray's, DeepSpeed's and the workers' own output live (always in RUN_DIR/dsw-ray.log)",
        )  # fmt: skip
    args = parser.parse_args(argv)
    if args.command in ("run", "sweep"):
        from dsw_ray.console import Session

        with Session(verbose=args.verbose, quiet=args.quiet) as session:
            return (run_job_file if args.command == "run" else run_study_file)(args, session)
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.command == "bench":
        try:
            command = benchmark("vllm_compare" if args.vllm else "dsw_bench")
        except UserError as error:
            print(f"dsw-ray: {error}", file=sys.stderr)
            return 2
        return command.main(args)
    if args.command == "model":
        from dsw_ray.gguf_import import import_gguf

        return printed(lambda: import_gguf(args.source, args.out))
    if args.command == "table":
        from dsw_ray.suite import run_suite

        return printed(lambda: run_suite(args.suite, args.overrides))
    from dsw_ray.report import status_text  # status

    return printed(lambda: status_text(args.run_dir))


def benchmark(module: str):
    """``benchmarks/<module>.py`` of the clone this package runs from (the benchmarks are not part
    of the installed package); Ray's workers import from that folder too (PYTHONPATH)."""
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    if not os.path.isfile(os.path.join(folder, f"{module}.py")):
        raise UserError(f"dsw-ray bench runs from a clone of the repository: there is no {module}.py in {folder}")
    sys.path.insert(0, folder)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [folder, os.environ.get("PYTHONPATH")]))
    return importlib.import_module(module)


def printed(produce) -> int:
    """Print what ``produce()`` returns (exit 0), or the user's mistake it raised (exit 2)."""
    try:
        print(produce())
    except UserError as error:
        print(f"dsw-ray: {error}", file=sys.stderr)
        return 2
    return 0


def run_job_file(args, session) -> int:
    """``dsw-ray run``: the job, then its table, on the session's terminal streams."""

    def work() -> str:
        from dsw_ray.config import load_job
        from dsw_ray.pipeline import run_job
        from dsw_ray.report import paper_valid_loss_line, text_table

        started = time.time()
        overrides = args.overrides + ([f"rerun_from={args.rerun_from}"] if args.rerun_from else [])
        job = load_job(args.job, overrides)
        summary = run_job(job)
        lines = [f"\n{summary['task']}: {summary['questions']} questions, {summary['valid']} valid, {summary['test']} test",
                 text_table(summary)]  # fmt: skip
        valid_loss = paper_valid_loss_line(summary)
        if valid_loss:
            lines.append(valid_loss)
        lines.append(f"\nrun directory: {job.run_dir} (summary.json, report.md); {time.time() - started:.0f} s")
        return "\n".join(lines)

    return in_session(session, work)


def run_study_file(args, session) -> int:
    """``dsw-ray sweep``: every point of the study, then its scaling report."""

    def work() -> str:
        from dsw_ray.study import run_study

        started = time.time()
        report = run_study(args.study, args.overrides)
        return f"\n{report}; {time.time() - started:.0f} s"

    return in_session(session, work)


def in_session(session, work) -> int:
    """``work()`` with Ctrl-C and SIGTERM stopping it between stages, then what it returns on the
    session's stdout (exit 0); a stop (130, 143), a failed stage or a crash (1) or the user's
    mistake (2) is one short paragraph on the terminal, the trace in the log."""
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)  # start_ray sets it again once Ray has started
    try:
        text = work()
    except (Interrupted, KeyboardInterrupt) as interrupt:
        if not isinstance(interrupt, Interrupted):  # outside any stage
            interrupt = Interrupted(None)
        session.report_interrupt(interrupt)
        return 143 if stop_requested() == signal.SIGTERM else 130
    except StageFailed as failure:
        session.report_failure(failure, failure.stage)
        return 1
    except UserError as error:
        print(f"dsw-ray: {error}", file=session.stderr)
        return 2
    except Exception as error:  # outside any stage: a bug, or the machine (Ray could not start)
        session.report_failure(error, None)
        return 1
    print(text, file=session.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
