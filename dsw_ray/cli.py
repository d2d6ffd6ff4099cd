"""``dsw-ray run JOB.yaml [key=value ...]``: run a job and print its accuracy table."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from dsw_ray.errors import UserError


def format_table(summary: dict) -> str:
    rows = [("base", "-", summary["base_accuracy"])]
    for result in summary["rounds"]:
        for method, numbers in result["methods"].items():
            rows.append((f"{method} (round {result['round']})", str(numbers["kept"]), numbers["accuracy"]))
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{'method':<{width}}  {'kept':>6}  accuracy", f"{'-' * width}  {'-' * 6}  --------"]
    lines += [f"{name:<{width}}  {kept:>6}  {acc * 100:7.1f}%" for name, kept, acc in rows]
    return "\n".join(lines)


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

        summary = run_job(job)
    except UserError as error:
        print(f"dsw-ray: {error}", file=sys.stderr)
        return 2
    print(f"\n{summary['task']}: {summary['questions']} questions, {summary['valid']} valid, {summary['test']} test")
    print(format_table(summary))
    print(f"\nrun directory: {job.run_dir} (summary.json); {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
