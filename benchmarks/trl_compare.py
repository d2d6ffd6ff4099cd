"""dsw-ray's fine-tune against Hugging Face TRL's ``SFTTrainer`` on the same work.

    pip install -e '.[bench]'
    python benchmarks/trl_compare.py [--rows 1024] [--model .cache/dsw-ray/toy-arith] [--out docs/trl_compare.json]

The same model (the quickstart's toy), the same rows (gold rationales of arith questions,
``Q: <question>\\nA: `` as the prompt, the answer and EOS as the only targets), one epoch,
micro batch 8, torch's AdamW at a constant learning rate, gradient clipping at 1.0, two
torch threads, one process each, with and without packing. Each engine runs in a fresh
process, one after the other: dsw-ray's ``train_worker`` (the loop every Ray Train worker
runs, DeepSpeed ZeRO stage 0 on one rank) and TRL's ``SFTTrainer``. Prints samples/s and
target tokens/s of each training loop, each process's wall time, and the mean loss of the
last quarter of steps (the two losses are averaged differently: dsw-ray's is the mean of
per-sample mean losses, TRL's the mean over all target tokens of a batch). Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

MICRO_BATCH, LEARNING_RATE, THREADS = 8, 1e-4, 2


def rows(count: int) -> list[tuple[str, str]]:
    from dsw_ray.tasks import SplitSizes, get_task

    examples = get_task("arith").load(None, SplitSizes(4, count, 4, seed=11)).valid
    return [(e.question, e.rationale) for e in examples]


def last_quarter(losses: list[float]) -> float:
    tail = losses[-max(1, len(losses) // 4) :]
    return sum(tail) / len(tail)


def run_dsw(spec: dict) -> dict:
    """dsw-ray's worker loop on one rank (gloo, ZeRO stage 0), as a Ray Train worker runs it."""
    import pyarrow as pa
    import torch.distributed as dist

    from dsw_ray.config import JobConfig
    from dsw_ray.train import train_plan
    from dsw_ray.train_worker import train_worker

    job = JobConfig.model_validate(
        {
            "run_dir": "unused",
            "task": {"name": "arith"},
            "model": {"path": spec["model"]},
            "train": {"zero_stage": 0, "epochs": 1, "micro_batch_size": MICRO_BATCH, "learning_rate": LEARNING_RATE,
                      "lr_schedule": "constant", "packing": spec["packing"]},
        }
    )
    plan = train_plan(job.train, job.model, spec["model"], THREADS)
    # A one-rank group, set up as torchrun would (DeepSpeed reads LOCAL_RANK).
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(spec["port"]))
    dist.init_process_group("gloo")
    table = pa.table({"question": [q for q, _ in spec["rows"]], "text": [a for _, a in spec["rows"]]})
    result = {}

    def report(metrics: dict, directory: str | None) -> None:
        if directory:
            with open(os.path.join(directory, "loss_history.json")) as f:
                result["losses"] = [h["loss"] for h in json.load(f)["history"]]
            result["loop_s"] = metrics["loop_seconds"]

    train_worker(plan, table, report)
    return result


def run_trl(spec: dict) -> dict:
    """TRL's SFTTrainer on prompt-completion rows (loss on the completion only)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from dsw_ray.tasks.numeric import training_prompt

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    data = Dataset.from_list(
        [{"prompt": training_prompt(q), "completion": a + tokenizer.eos_token} for q, a in spec["rows"]]
    )
    losses = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    config = SFTConfig(
        output_dir=spec["out"], per_device_train_batch_size=MICRO_BATCH, num_train_epochs=1,
        learning_rate=LEARNING_RATE, lr_scheduler_type="constant", optim="adamw_torch", weight_decay=0.0,
        max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
        packing=spec["packing"], completion_only_loss=True, max_length=512, dataloader_num_workers=0,
        disable_tqdm=True,
    )  # fmt: skip
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         callbacks=[Losses()])  # fmt: skip
    started = time.perf_counter()
    trainer.train()
    return {"losses": losses, "loop_s": time.perf_counter() - started}


def target_tokens(model: str, pairs: list[tuple[str, str]]) -> int:
    """Answer tokens plus EOS over all rows: the tokens both engines train on."""
    from dsw_ray.models import load_tokenizer
    from dsw_ray.sft import IGNORE, encode_example

    tokenizer = load_tokenizer(model)
    return sum(sum(label != IGNORE for label in encode_example(tokenizer, q, a, 512)["labels"]) for q, a in pairs)


def child(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    result = (run_dsw if spec["engine"] == "dsw-ray" else run_trl)(spec)
    with open(spec["out"] + ".json", "w") as f:
        json.dump(result, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--model", default=".cache/dsw-ray/toy-arith")
    parser.add_argument("--out", default="docs/trl_compare.json")
    args = parser.parse_args()
    model = os.path.abspath(args.model)
    pairs = rows(args.rows)
    tokens = target_tokens(model, pairs)
    work = tempfile.mkdtemp(prefix="dsw-trl-")
    results = []
    for engine, packing in (("dsw-ray", False), ("trl", False), ("dsw-ray", True), ("trl", True)):
        out = os.path.join(work, f"{engine}-{'packed' if packing else 'padded'}")
        spec = {"engine": engine, "packing": packing, "model": model, "rows": pairs, "out": out, "port": 29600 + len(results)}
        with open(out + ".spec", "w") as f:
            json.dump(spec, f)
        env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}
        started = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--child", out + ".spec"], check=True, env=env)
        wall = time.perf_counter() - started
        with open(out + ".json") as f:
            measured = json.load(f)
        results.append({
            "engine": engine, "packing": packing, "loop_s": round(measured["loop_s"], 2), "process_s": round(wall, 2),
            "samples_per_s": round(len(pairs) / measured["loop_s"], 1),
            "target_tokens_per_s": round(tokens / measured["loop_s"], 1),
            "steps": len(measured["losses"]), "last_quarter_loss": round(last_quarter(measured["losses"]), 4),
        })  # fmt: skip
        print(results[-1], flush=True)
    header = "| engine | packing | samples/s | target tokens/s | loop s | process s | steps | loss, last quarter |"
    lines = [header, "| --- | --- | --- | --- | --- | --- | --- | --- |"] + [
        f"| {r['engine']} | {'yes' if r['packing'] else 'no'} | {r['samples_per_s']} | {r['target_tokens_per_s']} | "
        f"{r['loop_s']} | {r['process_s']} | {r['steps']} | {r['last_quarter_loss']} |"
        for r in results
    ]
    print("\n".join(lines))
    import trl

    with open(args.out, "w") as f:
        json.dump({
            "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
            "cpus": os.cpu_count(), "trl": trl.__version__, "rows": len(pairs), "target_tokens": tokens,
            "results": results, "table_markdown": "\n".join(lines),
        }, f, indent=1)  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
