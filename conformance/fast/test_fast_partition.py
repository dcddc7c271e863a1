"""`partition_params` on a small transformer-like module, and one `Muon` training it end to end."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from muonlab.contract import RowSplit
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


# -- orientation: transformers' Conv1D, explicit matrix_dims, MoE banks (docs/fast.md "Real model code") ----------


class Conv1D(nn.Module):
    """transformers.pytorch_utils.Conv1D as GPT-2 defines it (weight ``[nx, nf]`` = ``[in, out]``)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.2)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, self.nx), self.weight).reshape(*x.shape[:-1], self.nf)


class Experts(nn.Module):
    """An MoE bank ``[E, out, in]`` (transformers' Mixtral layout), dense over its experts for the test."""

    def __init__(self, e: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(e, d_out, d_in) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bi,eoi->bo", x, self.w)


def test_conv1d_detected_and_printed() -> None:
    model = nn.Sequential(Conv1D(12, 4), Conv1D(4, 12))
    plan = partition_params(model)
    assert plan.matrix_dims == {"0.weight": (1, 0), "1.weight": (1, 0)}
    assert plan.reasons["0.weight"] == "matmul weight (Conv1D, stored [in, out])"
    text = str(plan)
    assert "12x4 (rows=dim 1, cols=dim 0)" in text and "matrix (out x in)" in text
    (muon_group, adamw_group) = plan.param_groups(lr=0.1)
    assert muon_group["matrix_dims"] == [(1, 0), (1, 0)] and muon_group["lr"] == 0.1
    assert "matrix_dims" not in adamw_group
    with pytest.raises(ValueError, match="muon_group_kwargs"):
        plan.param_groups(matrix_dims=[None, None])


def test_conv1d_lookalikes_are_not_detected() -> None:
    class Conv1D(nn.Module):  # same class name, no nx / nf: not transformers'
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(3, 5))

    fake = Conv1D()
    real = globals()["Conv1D"](5, 3)
    real.nx = 4  # attributes disagree with the weight's shape
    plan = partition_params(nn.Sequential(fake, real))
    assert plan.matrix_dims == {}
    assert all(muon_dims is None for muon_dims in plan.param_groups()[0]["matrix_dims"])


def test_moe_bank_routes_as_a_batch_of_matrices() -> None:
    model = nn.Sequential(Experts(4, 6, 10))
    plan = partition_params(model)
    assert [n for n, _ in plan.muon] == ["0.w"]
    assert plan.reasons["0.w"] == "batch of 4 matrices (e.g. MoE experts)"
    assert plan.matrix_dims == {}
    assert "4 of 10x6" in str(plan)


def test_explicit_matrix_dims_patterns() -> None:
    model = nn.Sequential(Experts(4, 6, 10), nn.Conv2d(3, 5, 3), Conv1D(12, 4), nn.LayerNorm(4))
    model.register_parameter("in_e_out", nn.Parameter(torch.zeros(6, 4, 10)))  # [in, E, out]
    plan = partition_params(
        model,
        matrix_dims={"0.w": "in_out", "1.weight": (0, 1), "2.weight": "out_in", "in_e_out": (2, 0)},
    )
    assert plan.matrix_dims == {"0.w": (2, 1), "1.weight": (0, 1), "in_e_out": (2, 0)}  # out_in beats detection
    text = str(plan)
    assert "4 of 6x10 (rows=dim 2, cols=dim 1)" in text
    assert "3x3 of 5x3 (rows=dim 0, cols=dim 1)" in text
    assert "4 of 10x6 (rows=dim 2, cols=dim 0)" in text


@pytest.mark.parametrize(
    ("dims", "exc", "match"),
    [
        ({"0.w": (0, 3)}, ValueError, r"matrix_dims\['0.w'\] \(0.w\): matrix_dims col_dim=3 is out of range"),
        ({"0.w": (1, 1)}, ValueError, r"\(0.w\): matrix_dims .* name the same dim 1 twice"),
        ({"0.w": "transposed"}, ValueError, r"\(0.w\): matrix_dims string must be 'in_out' or 'out_in'"),
        ({"0.w": 1}, TypeError, r"\(0.w\): matrix_dims must be None or a pair"),
        ({"1.weight": "in_out"}, ValueError, r"matrix_dims: pattern '1.weight' matches no parameter routed to Muon"),
        ({"nothing*": "in_out"}, ValueError, r"matrix_dims: pattern 'nothing\*' matches no parameter"),
        ({"0.*": "in_out", "*.w": "out_in"}, ValueError, r"matrix_dims: 0.w is matched by several patterns"),
    ],
)
def test_bad_matrix_dims_name_the_parameter(dims: dict[str, object], exc: type[Exception], match: str) -> None:
    model = nn.Sequential(Experts(4, 6, 10), nn.LayerNorm(4))
    with pytest.raises(exc, match=match):
        partition_params(model, matrix_dims=dims)


# -- through Muon: the "matrix_dims" group key (Muon.add_param_group / Muon.step call muonlab.fast.layout) -------


def _one_step(params: list[nn.Parameter], grads: list[torch.Tensor], dims: list[object], preset: str) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    Muon([{"params": params, "matrix_dims": dims}], preset, lr=0.1, backend="torch").step()


@pytest.mark.parametrize("preset", ["keller", "moonlight", "modded_normuon"])
def test_muon_steps_conv1d_as_its_transpose(preset: str) -> None:
    """A [in, out] weight with matrix_dims (1, 0) takes exactly the step of its [out, in] transpose."""
    torch.manual_seed(1)
    w = torch.randn(16, 48)  # Conv1D: in=16, out=48
    g = torch.randn(16, 48)
    conv = nn.Parameter(w.clone())
    lin = nn.Parameter(w.T.contiguous())
    _one_step([conv], [g], [(1, 0)], preset)
    _one_step([lin], [g.T.contiguous()], [None], preset)
    torch.testing.assert_close(conv.detach(), lin.detach().T, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(conv.detach(), w)


def test_muon_matrix_dims_wrong_for_the_shape_raises() -> None:
    p = nn.Parameter(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"param_groups\[0\].*col_dim=2 is out of range"):
        Muon([{"params": [p], "matrix_dims": [(0, 2)]}])
    with pytest.raises(ValueError, match=r"param_groups\[0\]"):
        Muon([{"params": [p], "matrix_dims": [None, None]}])


@pytest.mark.parametrize("preset", ["keller", "moonlight", "modded_normuon"])
def test_muon_moe_bank_is_e_matrices(preset: str) -> None:
    """[E, out, in] (default) and [in, E, out] (explicit (2, 0)) both step as E separate [out, in] matrices."""
    torch.manual_seed(2)
    e, d_out, d_in = 3, 10, 6
    w = torch.randn(e, d_out, d_in)
    g = torch.randn(e, d_out, d_in)
    bank = nn.Parameter(w.clone())
    stored = nn.Parameter(w.permute(2, 0, 1).contiguous())  # [in, E, out]
    singles = [nn.Parameter(w[i].clone()) for i in range(e)]
    _one_step([bank], [g], [None], preset)
    _one_step([stored], [g.permute(2, 0, 1).contiguous()], [(2, 0)], preset)
    _one_step(singles, [g[i] for i in range(e)], [None] * e, preset)
    want = torch.stack([s.detach() for s in singles])
    torch.testing.assert_close(bank.detach(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stored.detach().permute(1, 2, 0), want, rtol=1e-5, atol=1e-6)


def test_model_with_conv1d_and_experts_trains() -> None:
    """partition_params -> Muon on a model mixing Conv1D, an expert bank and Linear: the loss falls."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Embedding(16, 8), Conv1D(24, 8), nn.GELU(), Experts(2, 24, 8), nn.Linear(8, 16))
    model[-1].weight.requires_grad_(True)
    plan = partition_params(model, adamw=["4.weight"])
    opt = Muon(plan.param_groups(), "moonlight", lr=0.02, backend="torch")
    idx = torch.randint(0, 16, (64,))
    losses = []
    for _ in range(25):
        loss = nn.functional.cross_entropy(model(idx), (idx + 1) % 16)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


class _Config:
    def __init__(self, **fields: int) -> None:
        self.__dict__.update(fields)


class FusedAttention(nn.Module):
    """GPT-2's layout: a fused Q/K/V ``Conv1D`` ``c_attn`` and an output ``c_proj``, under ``model.config``."""

    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.config = _Config(n_head=n_head)
        self.attn = nn.Module()
        self.attn.c_attn = Conv1D(3 * d, d)  # weight [d, 3d]: [in, out]
        self.attn.c_proj = Conv1D(d, d)


class GqaAttention(nn.Module):
    """Llama's layout: separate projections, grouped keys and values (``num_key_value_heads``)."""

    def __init__(self, d: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.config = _Config(num_attention_heads=heads, num_key_value_heads=kv_heads)
        head_dim = d // heads
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)


def test_per_head_reads_the_head_counts_from_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    plan = partition_params(FusedAttention(32, 4), per_head=True, verbose=True)
    assert plan.heads == {"attn.c_attn.weight": 12}  # Q, K and V: 4 heads each
    assert "96x32 as 12 heads of 8x32" in capsys.readouterr().out
    plan = partition_params(GqaAttention(32, 4, 2), per_head=True)
    assert plan.heads == {"q_proj.weight": 4, "k_proj.weight": 2, "v_proj.weight": 2}
    groups = plan.param_groups()
    assert groups[0]["heads"] == [4, 2, 2, None]
    opt = Muon(groups, "keller", lr=0.02)
    for _, p in plan.muon:
        p.grad = torch.randn_like(p)
    opt.step()
    assert partition_params(GqaAttention(32, 4, 2)).heads == {}  # off unless asked


def test_heads_patterns_override_and_are_checked() -> None:
    model = GqaAttention(32, 4, 2)
    plan = partition_params(model, per_head=True, heads={"q_proj.*": 2, "v_proj.*": None})
    assert plan.heads == {"q_proj.weight": 2, "k_proj.weight": 2}
    assert "heads='q_proj.*'" in plan.reasons["q_proj.weight"]
    with pytest.raises(ValueError, match=r"heads: pattern 'nope\*' matches no parameter"):
        partition_params(model, heads={"nope*": 2})
    with pytest.raises(ValueError, match=r"5 heads cannot split q_proj\.weight, a 32x32 matrix"):
        partition_params(model, heads={"q_proj.*": 5})


class _Named(nn.Module):
    """One fused QKV ``nn.Linear`` named ``module`` under ``model.config``."""

    def __init__(self, module: str, rows: int, cols: int, **config: object) -> None:
        super().__init__()
        self.config = _Config(**config)  # type: ignore[arg-type]
        self.attn = nn.Module()
        setattr(self.attn, module, nn.Linear(cols, rows, bias=False))


@pytest.mark.parametrize(
    ("model", "want", "text"),
    [
        (FusedAttention(32, 4), RowSplit((32, 32, 32)), "96x32 as 32x32 + 32x32 + 32x32"),
        (
            _Named("qkv_proj", 64, 32, num_attention_heads=4, num_key_value_heads=2),  # Phi-3: [Q; K; V], d = 8
            RowSplit((32, 16, 16)),
            "64x32 as 32x32 + 16x32 + 16x32",
        ),
        (
            _Named("query_key_value", 96, 32, num_attention_heads=4, model_type="gpt_neox"),  # per head q, k, v
            RowSplit((8, 8, 8), groups=4),
            "96x32 as 32x32 + 32x32 + 32x32 (4 groups)",
        ),
        (
            _Named("linear_qkv", 96, 32, num_attention_heads=8, num_query_groups=2, kv_channels=8),  # Megatron GQA
            RowSplit((32, 8, 8), groups=2),
            "96x32 as 64x32 + 16x32 + 16x32 (2 groups)",
        ),
    ],
    ids=["gpt2_c_attn", "phi3_qkv_proj", "neox_query_key_value", "megatron_linear_qkv"],
)
def test_split_qkv_reads_the_layout_from_the_config(model: nn.Module, want: RowSplit, text: str) -> None:
    plan = partition_params(model, split_qkv=True)
    ((name, p),) = [(n, p) for n, p in plan.muon if "c_proj" not in n]
    assert plan.split == {name: want}
    assert text in plan.matrix_text(name, p.shape)
    assert "split Q/K/V (split_qkv, model.config)" in plan.reasons[name]
    groups = plan.param_groups()
    opt = Muon(groups, "keller", lr=0.02, compute_dtype="float32")
    for _, q in plan.muon:
        q.grad = torch.randn_like(q)
    before = p.detach().clone()
    opt.step()
    assert not torch.equal(before, p)
    assert partition_params(model).split == {}  # off unless asked


def test_split_patterns_override_and_are_checked() -> None:
    model = _Named("qkv_proj", 64, 32, num_attention_heads=4, num_key_value_heads=2)
    plan = partition_params(model, split={"attn.qkv_proj.*": [40, 24]})
    assert plan.split == {"attn.qkv_proj.weight": RowSplit((40, 24))}
    assert partition_params(model, split_qkv=True, split={"*qkv*": None}).split == {}
    with pytest.raises(ValueError, match=r"split: pattern 'nope\*' matches no parameter"):
        partition_params(model, split={"nope*": [32, 32]})
    with pytest.raises(ValueError, match=r"cover 60 rows, the matrix \(64, 32\) has 64"):
        partition_params(model, split={"*qkv*": [30, 30]})
    with pytest.raises(ValueError, match="split into heads already"):
        partition_params(model, per_head=True, split_qkv=True)
    odd = _Named("qkv_proj", 63, 32, num_attention_heads=4, num_key_value_heads=2)  # counts that do not fit
    assert partition_params(odd, split_qkv=True).split == {}
