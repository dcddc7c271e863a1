"""`partition_params` on a small transformer-like module, and one `Muon` training it end to end."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from muonlab.fast import Muon, ParamPlan, partition_params


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d, bias=False)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.attn(self.ln_1(x)).chunk(3, dim=-1)
        att = torch.softmax(q @ k.mT / q.shape[-1] ** 0.5, dim=-1)
        x = x + self.proj(att @ v)
        return x + self.mlp(self.ln_2(x))


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 32, d: int = 16, ctx: int = 8, tie: bool = False) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList([Block(d), Block(d)])
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.gain = nn.Parameter(torch.ones(()))
        if tie:
            self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        return self.lm_head(self.ln_f(x)) * self.gain


def test_routes_by_module_name_and_shape() -> None:
    plan = partition_params(TinyLM())
    muon = {n for n, _ in plan.muon}
    adamw = {n for n, _ in plan.adamw}
    assert muon == {f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attn", "proj", "mlp.0", "mlp.2")}
    for name in (
        "wte.weight",
        "wpe.weight",
        "lm_head.weight",
        "ln_f.weight",
        "ln_f.bias",
        "gain",
        "blocks.0.attn.bias",
        "blocks.1.ln_2.weight",
        "blocks.1.mlp.2.bias",
    ):
        assert name in adamw, name
    assert plan.reasons["lm_head.weight"] == "output head"
    assert plan.reasons["wte.weight"].startswith("embedding")
    assert plan.reasons["blocks.0.attn.bias"] == "bias"
    assert plan.reasons["blocks.0.attn.weight"] == "matmul weight (Linear)"
    text = str(plan)
    assert "lm_head.weight" in text and "adamw" in text and "16x48" not in text and "48x16" in text


def test_tied_head_appears_once_and_goes_to_adamw() -> None:
    model = TinyLM(tie=True)
    plan = partition_params(model)
    names = [n for n, _ in plan.muon + plan.adamw]
    assert len(names) == len(set(names)) == len(list(model.parameters()))
    assert "wte.weight" in dict(plan.adamw) and "lm_head.weight" not in names


def test_overrides_and_unmatched_pattern() -> None:
    plan = partition_params(TinyLM(), muon=["lm_head.weight"], adamw=["blocks.*.proj.weight"])
    assert "lm_head.weight" in dict(plan.muon)
    assert "blocks.0.proj.weight" in dict(plan.adamw)
    assert plan.reasons["lm_head.weight"].startswith("override")
    with pytest.raises(ValueError, match="nothing_here"):
        partition_params(TinyLM(), adamw=["nothing_here*"])
    with pytest.raises(ValueError, match="ndim >= 2"):
        partition_params(TinyLM(), muon=["gain"])


def test_verbose_prints_table(capsys: pytest.CaptureFixture[str]) -> None:
    partition_params(TinyLM(), verbose=True)
    out = capsys.readouterr().out
    assert "name" in out and "route" in out and "reason" in out and "blocks.0.attn.weight" in out


def test_conv_and_custom_ndim2_params_go_to_muon() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model.register_parameter("mix", nn.Parameter(torch.zeros(4, 4)))
    plan = partition_params(model)
    assert set(dict(plan.muon)) == {"0.weight", "mix"}
    assert plan.reasons["mix"] == "ndim >= 2 weight"
    assert set(dict(plan.adamw)) == {"0.bias", "1.weight", "1.bias"}


@pytest.mark.parametrize("preset", ["keller", "modded_normuon", "moonlight"])
def test_full_model_trains_with_one_muon(preset: str) -> None:
    torch.manual_seed(0)
    model = TinyLM()
    plan: ParamPlan = partition_params(model)
    opt = Muon(plan.param_groups(), preset, lr=0.02, backend="torch")
    assert [g["algorithm"] for g in opt.param_groups] == ["muon", "adamw"]
    for g in opt.param_groups[1:]:
        g["lr"] = 3e-3
    idx = torch.randint(0, 32, (16, 8))
    target = (idx + 1) % 32  # learnable: next token id
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(idx).reshape(-1, 32), target.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
