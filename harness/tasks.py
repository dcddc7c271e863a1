"""Fine-tuning tasks: problems with exact answers, generated deterministically, trained on with a loss on the
answer only, and scored by exact match under greedy decoding (docs/harness.md "Fine-tuning").

``arithmetic``: multi-step word problems over small non-negative integers, e.g.

    Ann has 12 apples. She buys 7 more. She gives away 5. How many apples does Ann have now? Answer: 14

A problem set is a pure function of the task section: ``seed`` draws the problems, the first ``n_test`` distinct
ones are the test split and the next ``n_train`` distinct ones the train split, so no test problem's text is in
train. Examples are ``prompt + " " + answer + "\\n"``; prompt and answer are tokenized separately (no BPE merge
across the boundary), so the test prompt is the exact prefix a trained example had. Targets are -1 (ignored by
the loss) everywhere but the answer's tokens and the newline that ends it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .config import TaskSection
from .significance import wilson_interval
from .tokenizer import Tokenizer

__all__ = ["Problem", "TaskData", "arithmetic_problems", "greedy_answers", "load_task", "task_endpoints"]

NAMES = ("Ann", "Ben", "Cara", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jill")
THINGS = ("apples", "books", "coins", "stamps", "shells", "marbles", "pens", "cards")
GAINS = ("buys {n} more", "finds {n} more", "gets {n} more")
LOSSES = ("gives away {n}", "loses {n}", "sells {n}")


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str


def _problem(rng: np.random.Generator, steps: int, max_value: int) -> Problem:
    name, thing = NAMES[rng.integers(len(NAMES))], THINGS[rng.integers(len(THINGS))]
    total = int(rng.integers(1, max_value + 1))
    parts = [f"{name} has {total} {thing}."]
    for _ in range(steps):
        gain = total == 0 or bool(rng.integers(2))  # never below zero
        n = int(rng.integers(1, max_value + 1)) if gain else int(rng.integers(1, total + 1))
        words = GAINS if gain else LOSSES
        parts.append(f"Then {words[rng.integers(len(words))].format(n=n)}.")
        total += n if gain else -n
    parts.append(f"How many {thing} now? Answer:")
    return Problem(" ".join(parts), str(total))


def arithmetic_problems(task: TaskSection) -> tuple[list[Problem], list[Problem]]:
    """(train, test): distinct problems drawn from ``Generator(PCG64(task.seed))``; `ValueError` naming
    ``task.n_train`` when the space of problems is too small to hold both splits."""
    rng = np.random.Generator(np.random.PCG64(task.seed))
    want = task.n_test + task.n_train
    seen: dict[str, Problem] = {}
    for _ in range(50 * want):  # ample for every space large enough; bounds the loop for the ones that are not
        p = _problem(rng, task.steps, task.max_value)
        seen.setdefault(p.prompt, p)
        if len(seen) == want:
            problems = list(seen.values())
            return problems[task.n_test :], problems[: task.n_test]
    raise ValueError(
        f"task.n_train: only {len(seen)} distinct problems found for n_test + n_train = {want} "
        f"(steps {task.steps}, max_value {task.max_value}); lower them or raise max_value"
    )


@dataclass
class TaskData:
    """A task's tokenized splits, with the corpus data's interface for the training loop (`batches`,
    `val_batches`, `meta`)."""

    task: TaskSection
    tok: Tokenizer
    train: list[Problem]
    test: list[Problem]
    pad: int
    encoded: dict[str, list[tuple[list[int], list[int]]]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split, problems in (("train", self.train), ("val", self.test)):
            prompts = self.tok.encode_batch([p.prompt for p in problems])
            answers = self.tok.encode_batch([f" {p.answer}\n" for p in problems])
            self.encoded[split] = list(zip(prompts, answers, strict=True))
        digest = hashlib.sha256(json.dumps(self.task.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
        self.meta = {
            "key": f"task-{self.task.name}-{digest[:16]}",
            "sources": [f"task:{self.task.name}"],
            "tokenizer": {"name": getattr(self.tok, "name", None), "sha256": getattr(self.tok, "sha256", None)},
            "task": self.task.model_dump(mode="json"),
            "train_tokens": sum(len(a) + len(b) for a, b in self.encoded["train"]),
            "val_tokens": sum(len(a) + len(b) for a, b in self.encoded["val"]),
            "train_problems": len(self.train),
            "test_problems": len(self.test),
        }

    def longest(self) -> int:
        return max(len(a) + len(b) for split in self.encoded.values() for a, b in split)

    def _batch(self, split: str, indices: np.ndarray, seq_len: int) -> tuple[Tensor, Tensor]:
        if self.longest() > seq_len + 1:
            raise ValueError(
                f"train.seq_len: {seq_len} is shorter than the task's longest example ({self.longest() - 1})"
            )
        x = torch.full((len(indices), seq_len), self.pad, dtype=torch.int64)
        y = torch.full((len(indices), seq_len), -1, dtype=torch.int64)
        for row, i in enumerate(indices):
            prompt, answer = self.encoded[split][int(i)]
            ids = prompt + answer
            x[row, : len(ids) - 1] = torch.tensor(ids[:-1])
            # the loss on the answer and its newline only: positions len(prompt)-1 ... predict them
            y[row, len(prompt) - 1 : len(ids) - 1] = torch.tensor(answer)
        return x, y

    def batch_at(self, split: str, batch_size: int, seq_len: int, seed: int, step: int) -> tuple[Tensor, Tensor]:
        """The batch of ``step``: problems drawn from ``Generator(PCG64(SeedSequence([seed, step])))``."""
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, step])))
        return self._batch(split, rng.integers(0, len(self.encoded[split]), size=batch_size), seq_len)

    def batches(
        self, split: str, batch_size: int, seq_len: int, seed: int, start_step: int = 0
    ) -> Iterator[tuple[Tensor, Tensor]]:
        step = start_step
        while True:
            yield self.batch_at(split, batch_size, seq_len, seed, step)
            step += 1

    def val_batches(self, batch_size: int, seq_len: int, n: int) -> list[tuple[Tensor, Tensor]]:
        """The test problems in order, ``n`` batches at most (the loss on their answers: the val loss)."""
        count = len(self.encoded["val"])
        idx = np.arange(min(count, n * batch_size))
        return [self._batch("val", idx[i : i + batch_size], seq_len) for i in range(0, len(idx), batch_size)]


def load_task(task: TaskSection, tok: Tokenizer) -> TaskData:
    if task.name != "arithmetic":  # the Literal admits no other today; kept for the table that will grow
        raise ValueError(f"task.name: unknown task {task.name!r}")
    train, test = arithmetic_problems(task)
    pad = tok.encode("\n")[0]  # never a target: padding positions carry target -1
    return TaskData(task=task, tok=tok, train=train, test=test, pad=pad)


@torch.no_grad()
def greedy_answers(model: torch.nn.Module, data: TaskData, device: torch.device, max_new_tokens: int) -> list[str]:
    """Each test prompt continued greedily (argmax, no sampling) until a newline or ``max_new_tokens``,
    decoded and stripped. Prompts of equal length run as one batch; the model is put back in its mode."""
    was_training = model.training
    model.eval()
    by_len: dict[int, list[int]] = {}
    for i, (prompt, _) in enumerate(data.encoded["val"]):
        by_len.setdefault(len(prompt), []).append(i)
    out = [""] * len(data.encoded["val"])
    for group in by_len.values():
        ids = torch.tensor([data.encoded["val"][i][0] for i in group], dtype=torch.int64, device=device)
        new: list[list[int]] = [[] for _ in group]
        done = [False] * len(group)
        for _ in range(max_new_tokens):
            logits, _ = model(ids)
            nxt = logits[:, -1].argmax(-1)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            for row, t in enumerate(nxt.tolist()):
                if not done[row]:
                    new[row].append(t)
                    done[row] = "\n" in data.tok.decode(new[row])
            if all(done):
                break
        for row, i in enumerate(group):
            out[i] = data.tok.decode(new[row]).split("\n")[0].strip()
    model.train(was_training)
    return out


def task_endpoints(model: torch.nn.Module, data: TaskData, device: torch.device) -> dict[str, Any]:
    """``task_accuracy`` (exact match of the greedy answer), ``task_correct``, ``task_total`` and the Wilson
    95% interval ``task_accuracy_lo`` / ``task_accuracy_hi``."""
    answers = greedy_answers(model, data, device, data.task.decode_tokens)
    correct = sum(a == p.answer for a, p in zip(answers, data.test, strict=True))
    lo, hi = wilson_interval(correct, len(data.test))
    return {
        "task_accuracy": correct / len(data.test),
        "task_correct": correct,
        "task_total": len(data.test),
        "task_accuracy_lo": lo,
        "task_accuracy_hi": hi,
    }
