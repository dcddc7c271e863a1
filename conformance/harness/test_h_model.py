"""muonlab.harness.model: shapes, parameter counts, causality, GQA/RoPE, nGPT sphere, residual scale."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from muonlab.harness.model import (
    GPT,
    MODEL_CONFIGS,
    ModelConfig,
    apply_rope,
    count_params,
    effective_rank,
    get_model_config,
    rope_cache,
)

torch.set_num_threads(1)

SMALL = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, seq_len=16)
SMALL_NGPT = dataclasses.replace(SMALL, ngpt=True, tie_embeddings=False)


def _model(cfg: ModelConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg)


@pytest.mark.parametrize("cfg", [SMALL, SMALL_NGPT, dataclasses.replace(SMALL, qk_norm=False)])
def test_forward_shapes_and_finite_loss(cfg: ModelConfig) -> None:
    m = _model(cfg)
    idx = torch.randint(0, cfg.vocab_size, (3, 11))
    logits, loss = m(idx, idx)
    assert logits.shape == (3, 11, cfg.vocab_size) and logits.dtype == torch.float32
    assert loss is not None and loss.dim() == 0 and torch.isfinite(loss)
    # at init the prediction is close to uniform
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 1.0
    logits2, none = m(idx)
    assert none is None and torch.equal(logits, logits2)


def test_88m_param_count_without_allocation() -> None:
    cfg = MODEL_CONFIGS["88m"]
    n = count_params(cfg)
    assert 80_000_000 <= n <= 95_000_000
    with torch.device("meta"):
        m = GPT(cfg)
    assert m.num_params() == n == 89_220_352
    assert m.num_params(non_embedding=True) == n - cfg.vocab_size * cfg.d_model
    assert all(p.is_meta for p in m.parameters())


@settings(max_examples=15, deadline=None)
@given(
    heads=st.sampled_from([(4, 4), (4, 2), (4, 1), (2, 1)]),
    layers=st.integers(1, 3),
    tie=st.booleans(),
    ngpt=st.booleans(),
    qk=st.booleans(),
)
def test_count_params_matches_module(heads: tuple[int, int], layers: int, tie: bool, ngpt: bool, qk: bool) -> None:
    cfg = ModelConfig(
        vocab_size=50,
        d_model=16,
        n_layers=layers,
        n_heads=heads[0],
        n_kv_heads=heads[1],
        ffn_dim=24,
        seq_len=8,
        tie_embeddings=tie,
        ngpt=ngpt,
        qk_norm=qk,
    )
    with torch.device("meta"):
        m = GPT(cfg)
    assert m.num_params() == count_params(cfg)


def test_named_configs() -> None:
    big, tiny = get_model_config("88m"), get_model_config("tiny")
    assert (big.d_model, big.n_layers, big.n_heads, big.n_kv_heads, big.ffn_dim, big.vocab_size, big.seq_len) == (
        512,
        22,
        8,
        4,
        2048,
        50304,
        2048,
    )
    assert (tiny.d_model, tiny.n_layers, tiny.n_heads, tiny.n_kv_heads, tiny.ffn_dim, tiny.vocab_size) == (
        128,
        4,
        4,
        2,
        512,
        4096,
    )
    assert MODEL_CONFIGS["tiny_ngpt"].ngpt
    with pytest.raises(ValueError, match="unknown"):
        get_model_config("nope")


def test_param_names_and_tying() -> None:
    names = [n for n, _ in _model(SMALL).named_parameters()]
    assert "embed.weight" in names and not any("lm_head" in n for n in names)
    for i in range(SMALL.n_layers):
        for n in ("q", "k", "v", "o"):
            assert f"blocks.{i}.attn.{n}.weight" in names
        assert f"blocks.{i}.mlp.fc.weight" in names and f"blocks.{i}.mlp.proj.weight" in names
    vector_params = [n for n, p in _model(SMALL).named_parameters() if p.dim() == 1]
    assert vector_params and all("norm" in n for n in vector_params)
    untied = [n for n, _ in _model(dataclasses.replace(SMALL, tie_embeddings=False)).named_parameters()]
    assert "lm_head.weight" in untied


def test_init_deterministic_from_seed() -> None:
    a, b, c = _model(SMALL, 1), _model(SMALL, 1), _model(SMALL, 2)
    for (n, p), (_, q), (_, _r) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    assert not torch.equal(a.embed.weight, c.embed.weight)


@pytest.mark.parametrize("cfg", [SMALL, SMALL_NGPT])
def test_causal_masking(cfg: ModelConfig) -> None:
    m = _model(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 12))
    t = 7
    idx2 = idx.clone()
    idx2[:, t:] = (idx2[:, t:] + 5) % cfg.vocab_size
    with torch.no_grad():
        a, _ = m(idx)
        b, _ = m(idx2)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert (a[:, t] - b[:, t]).abs().max() > 1e-4


def test_gqa_equals_expanded_mha() -> None:
    """GQA with query head h reading kv head h // (n_heads / n_kv) == MHA with duplicated k/v weights."""
    gqa = _model(SMALL)
    mha_cfg = dataclasses.replace(SMALL, n_kv_heads=SMALL.n_heads)
    mha = GPT(mha_cfg)
    group, hd = SMALL.n_heads // SMALL.n_kv_heads, SMALL.head_dim
    state = {}
    for name, p in gqa.state_dict().items():
        if name.endswith(("attn.k.weight", "attn.v.weight")):
            p = p.view(SMALL.n_kv_heads, hd, -1).repeat_interleave(group, dim=0).reshape(SMALL.n_heads * hd, -1)
        state[name] = p
    mha.load_state_dict(state)
    blk = gqa.blocks[0]
    assert blk.attn.k.weight.shape == (SMALL.n_kv_heads * hd, SMALL.d_model)
    assert blk.attn.q.weight.shape == (SMALL.n_heads * hd, SMALL.d_model)
    idx = torch.randint(0, SMALL.vocab_size, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(gqa(idx)[0], mha(idx)[0], rtol=1e-5, atol=1e-5)


def test_rope_is_a_rotation_with_relative_positions() -> None:
    hd, T = 8, 10
    cos, sin = rope_cache(T, hd, 10000.0)
    torch.manual_seed(0)
    q, k = torch.randn(hd, dtype=torch.float64), torch.randn(hd, dtype=torch.float64)
    qs = apply_rope(q.expand(1, 1, T, hd), cos.double(), sin.double())[0, 0]
    ks = apply_rope(k.expand(1, 1, T, hd), cos.double(), sin.double())[0, 0]
    torch.testing.assert_close(qs.norm(dim=-1), q.norm().expand(T))
    torch.testing.assert_close(qs[0], q)  # position 0 is unrotated
    dots = qs @ ks.T  # <R_m q, R_n k> depends on m - n only
    for d in range(-3, 4):
        diag = torch.diagonal(dots, offset=d)
        torch.testing.assert_close(diag, diag[0].expand_as(diag), rtol=1e-6, atol=1e-6)


def test_residual_scale_zero_ignores_blocks() -> None:
    cfg = dataclasses.replace(SMALL, residual_scale=0.0)
    a, b = _model(cfg, 0), _model(cfg, 1)
    b.embed.load_state_dict(a.embed.state_dict())
    idx = torch.randint(0, cfg.vocab_size, (2, 10))
    with torch.no_grad():
        la, lb = a(idx)[0], b(idx)[0]
        h = a.norm_f(a.embed(idx))
        expect = h @ a.embed.weight.T
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(la, expect)
    with torch.no_grad():
        full = _model(SMALL, 0)(idx)[0]
    assert (full - la).abs().max() > 1e-3


def test_ngpt_normalize_weights_unit_rows_and_cols() -> None:
    m = _model(SMALL_NGPT)
    axes = m.ngpt_sphere_axes()
    params = dict(m.named_parameters())
    assert set(axes) <= set(params) and axes["embed.weight"] == "row" and axes["lm_head.weight"] == "row"
    assert axes["blocks.0.attn.o.weight"] == "col" and axes["blocks.1.mlp.proj.weight"] == "col"
    assert axes["blocks.0.mlp.fc.weight"] == "row" and axes["blocks.0.attn.q.weight"] == "row"
    with torch.no_grad():
        for name in axes:
            params[name].mul_(torch.rand_like(params[name]) * 3 + 0.1)
    m.normalize_weights()
    for name, axis in axes.items():
        norms = params[name].norm(dim=1 if axis == "row" else 0)
        torch.testing.assert_close(norms, torch.ones_like(norms), rtol=1e-5, atol=1e-5)
    assert _model(SMALL).ngpt_sphere_axes() == {}


def test_ngpt_hidden_states_on_sphere() -> None:
    m = _model(SMALL_NGPT)
    idx = torch.randint(0, SMALL.vocab_size, (2, 6))
    h = m.embed(idx)
    for blk in m.blocks:
        h = blk(h, m.rope_cos, m.rope_sin)
        torch.testing.assert_close(h.norm(dim=-1), torch.ones(2, 6), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny", "tiny_ngpt"])
def test_tiny_overfits_a_batch(name: str) -> None:
    cfg = dataclasses.replace(MODEL_CONFIGS[name], seq_len=32)
    m = _model(cfg)
    torch.manual_seed(1)
    x = torch.randint(0, cfg.vocab_size, (4, 33))
    inp, tgt = x[:, :-1], x[:, 1:]
    # nGPT's logits are cosines times s_z (init 1, stored with the 1/sqrt(d) scale trick): its scalars
    # move sqrt(d) times slower per unit lr, so it is trained with a larger lr (as in the paper).
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2 if cfg.ngpt else 3e-3, weight_decay=0.0)
    first = None
    for _ in range(50):
        _, loss = m(inp, tgt)
        assert loss is not None
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
        if cfg.ngpt:
            m.normalize_weights()
    final = m(inp, tgt)[1]
    assert final is not None
    assert final.item() < 0.25 * first, (first, final.item())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("d_model", 30),
        ("n_kv_heads", 3),
        ("vocab_size", 0),
        ("n_layers", -1),
        ("ffn_dim", 0),
        ("rope_theta", 0.0),
        ("residual_scale", float("nan")),
        ("ngpt_normalize_every", 0),
        ("dropout", 0.1),
    ],
)
def test_config_validation_names_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(SMALL, **{field: value})


def test_forward_rejects_bad_input() -> None:
    m = _model(SMALL)
    with pytest.raises(ValueError, match="seq_len"):
        m(torch.zeros(1, SMALL.seq_len + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="idx"):
        m(torch.zeros(4, dtype=torch.long))


def test_effective_rank() -> None:
    assert effective_rank(torch.eye(6)) == pytest.approx(6.0)
    u, v = torch.randn(8, 1), torch.randn(1, 5)
    assert effective_rank(u @ v) == pytest.approx(1.0, abs=1e-6)
    w = torch.randn(7, 5)
    r = effective_rank(w)
    assert 1.0 < r < 5.0 and effective_rank(3.0 * w) == pytest.approx(r)
    assert effective_rank(torch.diag(torch.tensor([1.0, 1.0, 0.0]))) == pytest.approx(2.0)
    assert effective_rank(torch.zeros(3, 3)) == 0.0
