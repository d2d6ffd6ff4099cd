"""The testbed study behind the quickstart (docs/testbed.md): does self-improvement show on
the embedded toy model, and with which settings?

One process, no Ray: the toy is built with ``dsw_ray.toy``, candidates come from the
generate stage's own class (``TransformersGenerator``, same seeds and stop), the vote is
``vote.majority_vote`` and fine-tuning is a plain PyTorch loop with the train stage's loss,
optimizer, schedule and sample order. Every number is measured on a development split:
the arith task with ``task.seed = 1`` (its own unlabeled questions, valid set and test
set, kept out of the toy's pre-training corpus as the pipeline keeps a job's), never on
the quickstart's ``task.seed = 0`` test set, which the README's table reports. Each
fine-tune's accuracy comes with its paired difference to the base model and that
difference's 95% bootstrap interval over the test questions (``vs_base``), as in the
quickstart's table.

    python benchmarks/testbed.py --toy '{"two_step_share": 0.3, "steps": 1200}' --toy-seeds 1234 1 2 --out testbed.json
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import os
import re
import sys
import tempfile
import time
from collections import Counter
from statistics import fmean

DEV_TASK_SEED = 1


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build(toy_overrides: dict, seed: int, exclude: set[str], cache: str) -> str:
    from dsw_ray.rundir import fingerprint
    from dsw_ray.config import ToyModelConfig
    from dsw_ray.toy import build_toy_model

    config = ToyModelConfig(**{**toy_overrides, "seed": seed})
    path = os.path.join(cache, fingerprint("testbed-toy", config.model_dump(), sorted(exclude))[:12])
    started = time.time()
    build_toy_model(path, config, exclude)
    log(f"toy seed {seed}: {path} ({time.time() - started:.0f} s)")
    return path


def generator(path: str, samples: int, temperature: float | None, max_new_tokens: int, seed: int = 0):
    from dsw_ray.decoding import Decoding
    from dsw_ray.generate import TransformersGenerator
    from dsw_ray.models import ModelSpec
    from dsw_ray.tasks import get_task

    decoding = Decoding(max_new_tokens, temperature, samples, seed=seed, round_index=1)
    return TransformersGenerator(ModelSpec(path), get_task("arith"), decoding, threads=2)


def run_batches(gen, examples, batch_size: int) -> dict[str, list]:
    rows: dict[str, list] = {}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        out = gen({"question_id": [e.question_id for e in chunk], "question": [e.question for e in chunk],
                   "gold": [e.gold for e in chunk]})
        for key, values in out.items():
            rows.setdefault(key, []).extend(values)
    return rows


def graded(path: str, examples, max_new_tokens: int) -> list[bool]:
    """Whether each example's greedy answer is right."""
    from dsw_ray.tasks import get_task

    task = get_task("arith")
    rows = run_batches(generator(path, 1, None, max_new_tokens), examples, 100)
    return [task.is_correct(task.parse_answer(t), g) for t, g in zip(rows["text"], rows["gold"])]


def candidates(path: str, examples, samples: int, temperature: float, max_new_tokens: int, seed: int = 0) -> list[dict]:
    """Every candidate with its parsed answer, whether it is a majority one, and whether it is correct."""
    from dsw_ray.tasks import get_task
    from dsw_ray.vote import majority_vote

    task = get_task("arith")
    rows = run_batches(generator(path, samples, temperature, max_new_tokens, seed), examples, 16)
    out = []
    for start in range(0, len(rows["text"]), samples):
        texts = rows["text"][start : start + samples]
        answers = [task.parse_answer(t) for t in texts]
        _, is_majority = majority_vote(answers)
        for text, answer, majority in zip(texts, answers, is_majority):
            out.append({
                "question": rows["question"][start], "text": text, "answer": answer, "is_majority": majority,
                "correct": task.is_correct(answer, rows["gold"][start]),
            })
    return out


def fine_tune(path: str, pairs: list[tuple[str, str]], lr: float, epochs: int, micro_batch: int, out: str,
              schedule: str = "linear", seed: int = 0, lora: dict | None = None, warmup: float = 0.0) -> str:
    """The train stage's loss, AdamW, clipping, schedule and sample order, in one process."""
    import torch
    from dsw_ray import sft
    from dsw_ray.models import load_tokenizer
    from dsw_ray.sft import pad_batch, sequence_losses
    from dsw_ray.config import LoraConfig
    from dsw_ray.models import ModelSpec
    from dsw_ray.train_worker import build_model, lr_schedule, micro_batches

    torch.manual_seed(seed)
    tokenizer = load_tokenizer(path)
    model = build_model(ModelSpec(path), LoraConfig(**lora) if lora else None)
    model.train()
    examples = [sft.encode_example(tokenizer, q, a, 512) for q, a in pairs]
    steps = math.ceil(len(examples) / micro_batch) * epochs
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_schedule(warmup, schedule, steps)
    )
    for epoch in range(epochs):
        for batch in micro_batches(len(examples), micro_batch, seed, epoch):
            loss = sequence_losses(model, pad_batch([examples[i] for i in batch], tokenizer.pad_token_id)).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    model.eval()
    if lora:
        model = model.merge_and_unload()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def vote_stats(cands: list[dict]) -> dict:
    """Accuracy of the majority answer per question, and the correct share of all and of the majority candidates."""
    per_question: dict[str, list[dict]] = {}
    for c in cands:
        per_question.setdefault(c["question"], []).append(c)
    voted = [next((c for c in cs if c["is_majority"]), None) for cs in per_question.values()]
    majority = [c for c in cands if c["is_majority"]]
    return {
        "vote": sum(bool(c and c["correct"]) for c in voted) / len(voted),
        "candidates_correct": sum(c["correct"] for c in cands) / len(cands),
        "majority_correct": sum(c["correct"] for c in majority) / max(1, len(majority)),
        "majority": len(majority),
        **careless_stats(cands),
    }


def careless_stats(cands: list[dict]) -> dict:
    """How many candidates answer carelessly (one equation adding every amount, the habit of
    ``ToyModelConfig.careless_share``), how often those and the worked ones are right, and the
    careless share of the majority candidates."""
    careless = [c for c in cands if c["text"].count("=") == 1]
    worked = [c for c in cands if c["text"].count("=") != 1]
    return {
        "careless": len(careless) / len(cands),
        "careless_correct": sum(c["correct"] for c in careless) / max(1, len(careless)),
        "worked_correct": sum(c["correct"] for c in worked) / max(1, len(worked)),
        "majority_careless": sum(c["is_majority"] for c in careless) / max(1, sum(c["is_majority"] for c in cands)),
    }


EQUATION = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)\.")
OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def asked_amounts(question: str) -> list[int]:
    """The amounts a question gives, an amount given away negative."""
    from dsw_ray.tasks import arith

    return sorted(-int(n) if verb == "gives away" else int(n) for verb, n in arith.MOVE.findall(question))


def used_amounts(equations: list[tuple]) -> list[int]:
    """The amounts a rationale's equations compute with, each with the sign it is taken with."""
    if not equations:
        return []
    return sorted([int(equations[0][0]), *(-int(b) if op == "-" else int(b) for _, op, b, _ in equations)])


def wrong_majority(cands: list[dict]) -> dict:
    """What the wrong majority candidates got wrong: the amounts they computed with are not
    the question's (``off_by_one``: one amount read one too high or too low), an equation's
    result is wrong, both; or neither, but a move's sign (an amount given away added, or one
    got subtracted) or an equation that does not start from the previous one's result. And,
    per question with two or more such candidates, whether they all computed with the same
    amounts (one misreading repeated on every path) or with different ones."""
    kinds: dict[str, int] = {}
    amount_sets: dict[str, list] = {}
    off_by_one = 0
    for c in cands:
        if not c["is_majority"] or c["correct"]:
            continue
        equations = EQUATION.findall(c["text"])
        asked_signed, used_signed = asked_amounts(c["question"]), used_amounts(equations)
        asked, used = sorted(map(abs, asked_signed)), sorted(map(abs, used_signed))
        wrong_sum = any(OPERATIONS[op](int(a), int(b)) != int(r) for a, op, b, r in equations)
        if used != asked or wrong_sum:
            kind = {(True, False): "amounts", (False, True): "sums", (True, True): "both"}[(used != asked, wrong_sum)]
        elif used_signed != asked_signed:
            kind = "signs"
        elif any(later[0] != earlier[3] for earlier, later in zip(equations, equations[1:])):
            kind = "chain"
        else:
            kind = "other"
        kinds[kind] = kinds.get(kind, 0) + 1
        missing, extra = list((Counter(asked) - Counter(used)).elements()), list((Counter(used) - Counter(asked)).elements())
        off_by_one += kind == "amounts" and len(missing) == len(extra) == 1 and abs(missing[0] - extra[0]) == 1
        amount_sets.setdefault(c["question"], []).append(tuple(used))
    repeated = [sets for sets in amount_sets.values() if len(sets) >= 2]
    return {"rows": sum(kinds.values()), "kinds": kinds, "off_by_one": off_by_one, "questions": len(repeated),
            "questions_with_one_amount_set": sum(len(set(sets)) == 1 for sets in repeated)}


def study(args) -> dict:
    import torch

    from dsw_ray.config import LoraConfig
    from dsw_ray.stats import paired_difference
    from dsw_ray.tasks import SplitSizes, get_task

    torch.set_num_threads(2)
    lora = LoraConfig(**json.loads(args.lora)).model_dump() if args.lora is not None else None
    splits = get_task("arith").load(None, SplitSizes(args.questions, args.valid, args.test, seed=DEV_TASK_SEED))
    exclude = {e.question for e in splits.test + splits.valid}
    results = []
    for toy in args.toy:
        for toy_seed in args.toy_seeds:
            path = build(json.loads(toy), toy_seed, exclude, args.cache)
            base_correct = graded(path, splits.test, args.max_new_tokens)
            base = fmean(base_correct)
            greedy_q = fmean(graded(path, splits.questions, args.max_new_tokens))
            record = {"toy": toy, "toy_seed": toy_seed, "base": base, "greedy_on_questions": greedy_q, "sampling": {},
                      "tuned": {}, "vs_base": {}}
            log(f"{toy} seed {toy_seed}: base {base:.3f}, greedy on questions {greedy_q:.3f}")
            for temperature in args.temperature:
                cands = candidates(path, splits.questions, args.m, temperature, args.max_new_tokens, args.sample_seed)
                record["sampling"][str(temperature)] = vote_stats(cands)
                if args.errors:
                    record["sampling"][str(temperature)]["wrong_majority"] = wrong_majority(cands)
                log(f"  T={temperature} m={args.m}: {record['sampling'][str(temperature)]}")
            if not args.lr:
                results.append(record)
                continue
            sets = {
                "oracle": [(c["question"], c["text"]) for c in cands if c["correct"]],
                "lmsi": [(c["question"], c["text"]) for c in cands if c["is_majority"]],
                # A diagnosis, not a method: LMSI's rows without its wrong ones.
                "lmsi_correct": [(c["question"], c["text"]) for c in cands if c["is_majority"] and c["correct"]]
                if args.lmsi_correct else None,
                "gold": [(e.question, e.rationale) for e in splits.questions[: args.gold]] if args.gold else None,
            }
            for name, rows in sets.items():
                if not rows:
                    continue
                for lr in args.lr:
                    for epochs in args.epochs:
                        with tempfile.TemporaryDirectory() as tmp:
                            tuned = fine_tune(path, rows, lr, epochs, args.micro_batch, tmp, lora=lora)
                            correct = graded(tuned, splits.test, args.max_new_tokens)
                        key = f"{name} lr={lr:g} epochs={epochs}"
                        record["tuned"][key] = accuracy = fmean(correct)
                        # Paired over the same test questions, as the quickstart's table.
                        record["vs_base"][key] = versus = paired_difference(correct, base_correct)
                        log(f"  {name} ({len(rows)} rows) lr {lr:g} epochs {epochs}: {accuracy:.3f} "
                            f"({versus['difference']:+.3f} [{versus['low']:+.3f}, {versus['high']:+.3f}])")
            results.append(record)
    return {"settings": vars(args), "results": results}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", nargs="+", default=["{}"], help="ToyModelConfig overrides as JSON, one per toy")
    parser.add_argument("--toy-seeds", type=int, nargs="+", default=[1234])
    parser.add_argument("--questions", type=int, default=400)
    parser.add_argument("--valid", type=int, default=24)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--m", type=int, default=10)
    parser.add_argument("--sample-seed", type=int, default=0,
                        help="the job seed the candidates' own seeds derive from: another draw of the same candidates")
    parser.add_argument("--temperature", type=float, nargs="+", default=[0.6], help="the last one's candidates are tuned on")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--lr", type=float, nargs="*", default=[1e-4], help="none: no fine-tuning")
    parser.add_argument("--epochs", type=int, nargs="+", default=[2])
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--lora", default=None, help="LoRA settings as JSON (train.lora; {} for its defaults): "
                        "fine-tune an adapter instead of every weight")
    parser.add_argument("--lmsi-correct", action="store_true", help="also fine-tune on LMSI's right rows only")
    parser.add_argument("--errors", action="store_true", help="classify the wrong majority candidates' mistakes")
    parser.add_argument("--gold", type=int, default=0, help="also fine-tune on this many gold rationales")
    parser.add_argument("--cache", default=".cache/dsw-ray/testbed")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    result = study(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
