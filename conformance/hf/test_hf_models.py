"""Muon on Hugging Face transformers models (docs/fast.md "Real model code"): randomly initialised tiny GPT-2
and Llama (no download), routed by `partition_params` and trained with transformers' `Trainer` and
``optimizers=(Muon(...), scheduler)``; GPT-2's ``Conv1D`` (``[in, out]`` storage) updated with the shape
scale of its ``[out, in]`` matrix. Run by ``nox -s hf``; skipped when transformers / accelerate are missing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers' Trainer needs it

from torch.utils.data import Dataset
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
)

from muonlab.contract import RowSplit
from muonlab.fast import Muon, partition_params

pytestmark = pytest.mark.hf

VOCAB, CTX = 64, 16


class Counting(Dataset[dict[str, torch.Tensor]]):
    """Sequences ``s, s+1, ...`` mod VOCAB from random starts: learnable in a few dozen steps."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = (torch.randint(0, VOCAB, (n, 1), generator=g) + torch.arange(CTX)) % VOCAB

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.x[i]}


def gpt2(n_layer: int = 2) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_embd=64, n_layer=n_layer, n_head=4, vocab_size=VOCAB, n_positions=CTX, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(cfg)


def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=CTX,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg)


def train(model: torch.nn.Module, tmp_path: Path, steps: int = 30) -> list[float]:
    """``steps`` Trainer steps with Moonlight Muon (fp32 Newton-Schulz) and a linear warm-down; logged losses."""
    plan = partition_params(model)
    opt = Muon(plan.param_groups(), "moonlight", lr=0.01, backend="torch", compute_dtype="float32")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - 0.5 * s / steps)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=8,
        logging_steps=5,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Counting(8 * steps), optimizers=(opt, sched))
    trainer.train()
    assert getattr(trainer.optimizer, "optimizer", trainer.optimizer) is opt  # ours (accelerate wraps it)
    return [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]


def test_gpt2_plan_orients_conv1d_and_ties_head_once() -> None:
    model = gpt2()
    plan = partition_params(model)
    names = [n for n, _ in plan.muon + plan.adamw]
    assert len(names) == len(set(names)) == len(list(model.parameters()))
    assert "lm_head.weight" not in names  # tied to wte: once, under its first name
    assert plan.reasons["transformer.wte.weight"].startswith("embedding")
    assert {n for n, _ in plan.muon} == {
        f"transformer.h.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    assert set(plan.matrix_dims.values()) == {(1, 0)} and len(plan.matrix_dims) == 8
    assert "192x64 (rows=dim 1, cols=dim 0)" in str(plan)


def test_llama_plan() -> None:
    plan = partition_params(llama())
    assert plan.matrix_dims == {}
    assert plan.reasons["lm_head.weight"] == "output head"
    assert plan.reasons["model.embed_tokens.weight"].startswith("embedding")
    assert "model.layers.0.self_attn.k_proj.weight" in dict(plan.muon)  # GQA: 32x64
    assert "model.norm.weight" in dict(plan.adamw)


def test_per_head_plans_read_the_configs() -> None:
    """``per_head=True`` on the real models: GPT-2's fused ``c_attn`` as 3 x n_head blocks of its [out, in] view,
    Llama's q_proj by num_attention_heads and k_proj / v_proj by num_key_value_heads; a step runs."""
    model = gpt2(n_layer=1)
    plan = partition_params(model, per_head=True)
    assert plan.heads == {"transformer.h.0.attn.c_attn.weight": 12}
    assert plan.matrix_text("transformer.h.0.attn.c_attn.weight", (64, 192)).startswith("192x64 as 12 heads of 16x64")
    plan = partition_params(llama(), per_head=True)
    assert {n.split(".")[-2]: h for n, h in plan.heads.items() if ".0." in n} == {"q_proj": 4, "k_proj": 2, "v_proj": 2}
    model = gpt2(n_layer=1)
    opt = Muon(partition_params(model, per_head=True).param_groups(), "keller", lr=0.02, compute_dtype="float32")
    x = Counting(4).x
    model(input_ids=x, labels=x).loss.backward()
    before = model.transformer.h[0].attn.c_attn.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.transformer.h[0].attn.c_attn.weight)


def test_split_qkv_plan_on_gpt2() -> None:
    """``split_qkv=True`` on the real GPT-2: ``c_attn`` (stored ``[in, out]``) as Q, K and V, three 64x64 matrices
    of its ``[out, in]`` view (Megatron's ``muon_split_qkv``); a step runs and moves every block."""
    model = gpt2(n_layer=1)
    plan = partition_params(model, split_qkv=True)
    name = "transformer.h.0.attn.c_attn.weight"
    assert plan.split == {name: RowSplit((64, 64, 64))}
    assert plan.matrix_text(name, (64, 192)).startswith("192x64 as 64x64 + 64x64 + 64x64")
    opt = Muon(plan.param_groups(), "keller", lr=0.02, compute_dtype="float32")
    x = Counting(4).x
    model(input_ids=x, labels=x).loss.backward()
    before = model.transformer.h[0].attn.c_attn.weight.detach().clone()
    opt.step()
    after = model.transformer.h[0].attn.c_attn.weight.detach()
    assert all(not torch.equal(before[:, i : i + 64], after[:, i : i + 64]) for i in (0, 64, 128))


def _c_attn_step(matrix_dims: dict[str, Any] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One keller step (exact SVD polar factor, no decay) on a random GPT-2: ``(dW, G)`` of layer 0's c_attn."""
    model = gpt2(n_layer=1)
    plan = partition_params(model, matrix_dims=matrix_dims)
    opt = Muon(plan.param_groups(), "keller", lr=0.1, orthogonalizer="svd", compute_dtype="float32", backend="torch")
    with torch.no_grad():  # LayerNorm's init output is mean-free (G would have rank 63): random gain and bias
        model.transformer.h[0].ln_1.weight.normal_(1.0, 0.3)
        model.transformer.h[0].ln_1.bias.normal_(0.0, 0.3)
    x = Counting(8).x
    model(input_ids=x, labels=x).loss.backward()
    w = model.transformer.h[0].attn.c_attn.weight
    before = w.detach().clone()
    opt.step()
    return w.detach() - before, w.grad.detach().clone()


def test_gpt2_attention_update_has_the_out_in_scale() -> None:
    """c_attn is Conv1D [64, 192]; its matrix is [192 out, 64 in]: keller's max(1, 192/64)^0.5 = 1.73, every
    singular value of the update / lr, and the direction is the polar factor of G^T."""
    dw, g = _c_attn_step(None)
    view = -dw.T / 0.1  # [192, 64]
    sv = torch.linalg.svdvals(view.double())
    torch.testing.assert_close(sv, torch.full_like(sv, math.sqrt(3.0)), rtol=1e-4, atol=0)
    u, _, vh = torch.linalg.svd(g.T.double(), full_matrices=False)
    torch.testing.assert_close(view.double(), math.sqrt(3.0) * (u @ vh), rtol=0, atol=1e-4)
    # the same step reading the [in, out] storage as [out, in] (the bug this fixes) has scale 1
    dw_wrong, _ = _c_attn_step({"*.c_attn.weight": "out_in"})
    sv_wrong = torch.linalg.svdvals(dw_wrong.double() / 0.1)
    torch.testing.assert_close(sv_wrong, torch.ones_like(sv_wrong), rtol=1e-4, atol=0)


@pytest.mark.parametrize("make", [gpt2, llama], ids=["gpt2", "llama"])
def test_trainer_with_muon_lowers_the_loss(make: Any, tmp_path: Path) -> None:
    losses = train(make(), tmp_path)
    assert len(losses) == 6
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.3 * losses[0], losses
