"""``dsw-ray run JOB.yaml [key=value ...]``: run a job and print its accuracy table."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from dsw_ray.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dsw-ray", description="Importance-weighted self-improvement on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a job file")
    run.add_argument("job", help="job YAML file, e.g. jobs/quickstart.yaml")
    run.add_argument("overrides", nargs="*", help="key=value settings, e.g. train.epochs=2")
    run.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from dsw_ray.config import load_job

    started = time.time()
    try:
        job = load_job(args.job, args.overrides)
        from dsw_ray.pipeline import run_job
        from dsw_ray.report import text_table

        summary = run_job(job)
    except UserError as error:
        print(f"dsw-ray: {error}", file=sys.stderr)
        return 2
    print(f"\n{summary['task']}: {summary['questions']} questions, {summary['valid']} valid, {summary['test']} test")
    print(text_table(summary))
    print(f"\nrun directory: {job.run_dir} (summary.json, report.md); {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
