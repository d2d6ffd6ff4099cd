"""The embedded base model: a tiny Llama pre-trained briefly on labeled ``arith`` problems.

No weights can be downloaded on a machine without internet, so the quickstart builds its
own base model: a byte-level BPE tokenizer trained on arith text (digits split one per
token, which makes arithmetic learnable for a small model) and a small Llama pre-trained
on packed ``Q: ...\\nA: ...`` blocks, the same layout as a few-shot prompt. It is saved as
an ordinary Hugging Face directory and used like any other model path; a second build at
the same path with the same settings reuses it, and a build anywhere else on the machine with
the same settings, left-out questions, code and torch links it from the machine's cache
(``~/.cache/dsw-ray/toys``, or ``$DSW_RAY_CACHE/toys``; ``DSW_RAY_CACHE=`` turns it off).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import random
import shutil
import time

from dsw_ray.config import ToyModelConfig, load_job
from dsw_ray.rundir import fingerprint, link_tree
from dsw_ray.tasks import arith, splits_of

log = logging.getLogger(__name__)

MARKER = "dsw_ray_toy.json"
BUILD_THREADS = 2
# Bumped when the same settings build a different model (the corpus, the recipe), so that a
# cached build of older code is refused instead of silently reused.
BUILD_VERSION = 3
# The quickstart's model.path (relative to the repository) and its job, whose toy settings and
# splits the tests and benchmarks build the same model from.
QUICKSTART_TOY = ".cache/dsw-ray/toy-arith"
QUICKSTART_JOB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jobs", "quickstart.yaml")


def corpus(config: ToyModelConfig, exclude: set[str]) -> list[str]:
    """Labeled ``Q:/A:`` blocks from a stream of their own, none of them an ``exclude`` question,
    ``careless_share`` of the two-step ones answered carelessly."""
    examples = arith.generate_examples(
        config.seed, config.pretrain_examples, "pretrain", exclude, two_step_share=config.two_step_share
    )
    # Drawn from a stream of their own, so that the problems are those of a share of 0.
    careless = random.Random(config.seed + 1)
    return [
        f"Q: {e.question}\nA: {arith.careless(e) if careless.random() < config.careless_share else e.rationale}\n\n"
        for e in examples
    ]


def block_ids(tokenizer, text: str) -> list[int]:
    """A corpus block's tokens with EOS after the answer, before the blank line that separates
    blocks: every training and scoring text ends its answer with EOS, and a base model that
    never saw one pays about log(vocabulary) nats for it, which swamped the mean loss of a
    short answer and so every DS weight (docs/testbed.md). The separator keeps the tokens it
    has in a few-shot prompt."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    block = len(tokenizer(text.rstrip("\n"), add_special_tokens=False)["input_ids"])
    return ids[:block] + [tokenizer.eos_token_id] + ids[block:]


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def pretrain(model, token_ids: list[int], config: ToyModelConfig) -> float:
    """Next-token training on random windows of the token stream; returns the last loss."""
    import torch

    generator = torch.Generator().manual_seed(config.seed)
    stream = torch.tensor(token_ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, config.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / config.steps)),
    )
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(config.steps):
        starts = torch.randint(0, len(stream) - config.block_size, (config.batch_size,), generator=generator)
        batch = torch.stack([stream[s : s + config.block_size] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == config.steps - 1:
            log.info("toy pre-training step %d/%d loss %.3f", step + 1, config.steps, loss.item())
    model.eval()
    return float(loss.item())


def build_settings(config: ToyModelConfig) -> dict:
    """What a build's marker records, and what a later build must match to reuse it."""
    return {**config.model_dump(), "build_version": BUILD_VERSION}


def cached_build(config: ToyModelConfig, exclude: set[str]) -> str | None:
    """Where the machine's cache keeps the build of these settings and left-out questions by
    this code and this torch (None: the cache is off). A build is a pure function of them, so
    a second clone or run directory links it (copies it across filesystems) instead of
    pre-training again."""
    import torch

    root = os.environ.get("DSW_RAY_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "dsw-ray"))
    if not root:
        return None
    sources = []
    for module in (__file__, arith.__file__):
        with open(module) as f:
            sources.append(f.read())
    return os.path.join(root, "toys", fingerprint(build_settings(config), sorted(exclude), torch.__version__, sources))


@contextlib.contextmanager
def staged(path: str):
    """A sibling folder to fill, renamed to ``path`` (absent or empty) once whole, so that an
    interrupted build or copy never looks finished, and removed if filling it fails; the
    rename is an OSError where another process put its folder there first."""
    staging = os.path.join(os.path.dirname(os.path.abspath(path)), f".toy-{os.getpid()}-{os.path.basename(path)}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        yield staging
        if os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)
        os.rename(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def build_toy_model(path: str, config: ToyModelConfig, exclude: set[str] = frozenset()) -> str:
    """Build the model at ``path`` unless a build with the same settings is already there.
    Processes that ask for the same path at once (two jobs, parallel test workers) take
    turns: the first builds, the others wait and reuse its build."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(os.path.join(parent, f".{os.path.basename(os.path.abspath(path))}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build_unless_built(path, config, exclude)


def build_unless_built(path: str, config: ToyModelConfig, exclude: set[str]) -> str:
    marker = os.path.join(path, MARKER)
    settings = build_settings(config)
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f).get("config") == settings:
                log.info("reusing the toy base model at %s", path)
                return path
        raise FileExistsError(
            f"{path} holds a toy model built with other settings; remove it or point model.path elsewhere."
        )
    if os.path.exists(path) and os.listdir(path):
        raise FileExistsError(f"{path} exists and is not a toy model build; point model.path elsewhere.")
    cached = cached_build(config, exclude)
    if cached is not None and os.path.exists(os.path.join(cached, MARKER)):
        with staged(path) as staging:
            link_tree(cached, staging)  # hard links: a finished build is never written again
        log.info("copied the toy base model to %s from the cache %s", path, cached)
        return path

    import torch

    started = time.time()
    # Same machine, same settings, same weights bit for bit: seeded everything, deterministic
    # kernels and one thread count whatever the machine has (it changes the float sums).
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(BUILD_THREADS)
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(config.seed)
        save_build(path, config, exclude, started)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    if cached is not None and not os.path.exists(cached):
        try:
            os.makedirs(os.path.dirname(cached), exist_ok=True)
            with staged(cached) as staging:
                link_tree(path, staging)
        except OSError as error:  # a full or read-only cache costs the next clone a build, nothing more
            log.warning("could not keep the toy base model in the cache %s: %s", cached, error)
    return path


def save_build(path: str, config: ToyModelConfig, exclude: set[str], started: float) -> None:
    """Train the tokenizer, pre-train the model and put the finished folder in place."""
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = build_settings(config)
    texts = corpus(config, set(exclude))
    random.Random(config.seed).shuffle(texts)
    tokenizer = train_tokenizer(texts, config.vocab_size)
    token_ids = [tokenizer.bos_token_id]
    for text in texts:
        token_ids.extend(block_ids(tokenizer, text))
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.hidden_size,
            intermediate_size=config.hidden_size * 3,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_heads,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    final_loss = pretrain(model, token_ids, config)
    with staged(path) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        with open(os.path.join(staging, MARKER), "w") as f:
            json.dump({"config": settings, "final_loss": final_loss, "seconds": time.time() - started}, f)
    log.info("built the toy base model at %s in %.0f s (loss %.3f)", path, time.time() - started, final_loss)


def build_quickstart_toy(path: str = QUICKSTART_TOY) -> str:
    """The quickstart's toy model at ``path``, built as ``jobs/quickstart.yaml`` builds it (its
    settings, its valid and test questions left out of the corpus), so that the quickstart,
    the tests and the benchmarks reuse one build."""
    job = load_job(QUICKSTART_JOB)
    splits = splits_of(job.task)
    return build_toy_model(path, job.model.toy, {e.question for e in splits.test + splits.valid})
