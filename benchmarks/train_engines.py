"""Training throughput and peak memory of each engine, through the real train stage.

    python benchmarks/train_engines.py [--rows 256] [--epochs 2] [--workers 2] [--out docs/train_engines.json]

Runs ``fine_tune`` (Ray Train + DeepSpeed) on a local Ray for plain data parallel (ZeRO
stage 0), ZeRO-2, ZeRO-3, ZeRO-3 with optimizer and parameter offload, LoRA (ZeRO-2),
LoRA (ZeRO-3), and DDP and ZeRO-2 with packed micro batches on the same rows (gold rationales
of the arith task) and the quickstart's toy model, and prints samples/s of the training
loop (engine set-up and Ray start-up excluded, reported apart) and the peak memory of the
largest worker. Writes the numbers, the command and the machine as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

ENGINES = {
    "ddp": {"zero_stage": 0},
    "zero2": {"zero_stage": 2},
    "zero3": {"zero_stage": 3},
    "zero3_offload": {"zero_stage": 3, "offload_optimizer": True, "offload_params": True},
    "lora_zero2": {"zero_stage": 2, "lora": {"r": 16}},
    "lora_zero3": {"zero_stage": 3, "lora": {"r": 16}},
    # Each micro batch in one sequence, no padding (train.packing).
    "ddp_packed": {"zero_stage": 0, "packing": True},
    "zero2_packed": {"zero_stage": 2, "packing": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--model", default=".cache/dsw-ray/toy-arith", help="built as the quickstart's toy if missing")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--out", default="docs/train_engines.json")
    args = parser.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from dsw_ray import get_task
    from dsw_ray.toy import build_quickstart_toy
    from dsw_ray.config import JobConfig
    from dsw_ray.tasks import SplitSizes
    from dsw_ray.train import fine_tune

    build_quickstart_toy(args.model)
    examples = get_task("arith").load(None, SplitSizes(4, args.rows, 4, seed=99)).valid
    rows = pa.table({"question": [e.question for e in examples], "text": [e.rationale for e in examples]})
    ray.init(address="local", include_dashboard=False, num_cpus=os.cpu_count())
    results = []
    for name in args.engines.split(","):
        job = JobConfig.model_validate(
            {
                "run_dir": "unused",
                "task": {"name": "arith"},
                "model": {"path": args.model},
                "train": {"num_workers": args.workers, "epochs": args.epochs, "micro_batch_size": args.micro_batch,
                          "learning_rate": 2e-4, **ENGINES[name]},
            }
        )
        with tempfile.TemporaryDirectory() as scratch:
            started = time.time()
            pq.write_table(rows, os.path.join(scratch, "kept.parquet"))
            metrics = fine_tune(
                os.path.join(scratch, "kept.parquet"), job.train, job.model, os.path.abspath(args.model),
                os.path.join(scratch, "model"), os.path.join(scratch, "ray_train"),
            )
            wall = time.time() - started
        samples = (args.rows // args.workers) * args.workers * args.epochs
        results.append(
            {
                "engine": name,
                "samples_per_s": round(samples / metrics["loop_seconds"], 2),
                "loop_s": round(metrics["loop_seconds"], 2),
                "stage_wall_s": round(wall, 2),
                "peak_memory_mb": max(metrics["peak_memory_mb"]),
                "final_loss": round(metrics["final_loss"], 4),
                "optimizer_steps": metrics["optimizer_steps"],
            }
        )
        print(json.dumps(results[-1]), flush=True)
    ray.shutdown()

    print(f"\n{'engine':<14} {'samples/s':>9} {'loop s':>7} {'stage s':>8} {'peak MB':>8} {'final loss':>10}")
    for r in results:
        print(f"{r['engine']:<14} {r['samples_per_s']:>9} {r['loop_s']:>7} {r['stage_wall_s']:>8} {r['peak_memory_mb']:>8} {r['final_loss']:>10}")
    report = {
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "settings": vars(args),
        "results": results,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
