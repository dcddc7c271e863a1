"""Decoder-only transformer for the harness: a LLaMA-style GPT and its nGPT variant.

Standard model (``ngpt=False``), per block, with ``RMSNorm`` pre-norm and ``r = residual_scale``::

    h <- h + r * Attn(RMSNorm(h))        # GQA, RoPE, QK-RMSNorm, causal SDPA
    h <- h + r * MLP(RMSNorm(h))         # proj(relu(fc(x))^2)   (squared ReLU, arXiv 2109.08668)
    logits = RMSNorm(h) @ E^T            # lm_head tied to the embedding E (``tie_embeddings``)

``residual_scale`` multiplies the output of every residual branch before it is added to the stream;
1.0 is the ordinary transformer, 0.0 turns every block off (the logits depend only on the embedding).

nGPT variant (``ngpt=True``; Loshchilov et al., arXiv 2410.01131, reference code NVIDIA/ngpt
``model.py``): every vector that lives in the embedding space is on the unit sphere.

* Weights: rows of ``embed``/``lm_head`` ``[V, d]``, of ``q``/``k``/``v``/``fc`` ``[n, d]`` and columns of
  ``o``/``proj`` ``[d, n]`` are unit vectors (``normalize_weights``; nGPT ``normalize_matrices``). The
  trainer calls it after every ``ngpt_normalize_every``-th optimizer step (or the optimizer keeps them on
  the sphere itself, ``sphere_axis`` per parameter from ``ngpt_sphere_axes``).
* Hidden state (paper eq. 10-11): ``h <- Norm(h + alpha_A (Norm(Attn(h)) - h))`` and the same for the
  MLP with ``alpha_M``; ``alpha`` are learnable per-dimension "eigen learning rates" stored with the
  paper's scale trick (``alpha = |param| * init_value / init_scaling``, init 0.05, scaling 1/sqrt(d)).
* Attention: ``q, k <- s_qk * Norm(q), s_qk * Norm(k)`` per head after RoPE, softmax scale ``sqrt(d_head)``
  (eq. 15-16; ``s_qk`` init 1, scaling 1/sqrt(d)).
* Logits: ``z = s_z * (h @ E_out^T)`` with learnable per-token ``s_z`` (eq. 3; init 1, scaling 1/sqrt(d)).
* No RMSNorm anywhere (the normalizations replace them).

Simplifications against NVIDIA/ngpt (documented in docs/data.md): the MLP is squared ReLU instead of
SwiGLU, so the paper's ``s_u``/``s_v`` pair becomes one learnable per-channel scale ``s_u`` on ``fc(h)``
(times ``sqrt(d)`` so the pre-activations are O(1), as nGPT does for ``v``); ``residual_scale`` is ignored;
tied embeddings are allowed (the paper unties them; ``tiny_ngpt`` unties them).

Parameter names make optimizer routing obvious: ``embed.weight``, ``blocks.{i}.attn.{q,k,v,o}.weight``,
``blocks.{i}.mlp.{fc,proj}.weight``, norms ``blocks.{i}.{attn_norm,mlp_norm}.weight``,
``blocks.{i}.attn.{q_norm,k_norm}.weight``, ``norm_f.weight``; ``lm_head.weight`` only when untied; nGPT
scalars ``blocks.{i}.{attn_alpha,mlp_alpha}``, ``blocks.{i}.attn.s_qk``, ``blocks.{i}.mlp.s_u``, ``s_z``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GPT",
    "MODEL_CONFIGS",
    "ModelConfig",
    "count_params",
    "effective_rank",
    "get_model_config",
]


@torch.no_grad()
def head_max_logits(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """``[H]`` float32: each query head's largest causal logit ``q_i . k_j * scale`` (``j <= i``) over the batch.

    ``q``: ``[B, H, T, hd]``, ``k``: ``[B, H_kv, T, hd]`` (query head ``h`` reads key head ``h // (H / H_kv)``,
    as ``scaled_dot_product_attention(enable_gqa=True)`` does). One batch row at a time, so the extra memory
    is one ``[H, T, T]`` float32 block.
    """
    B, H, T, _ = q.shape
    g = H // k.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    out = torch.full((H,), -math.inf, dtype=torch.float32, device=q.device)
    with torch.autocast(q.device.type, enabled=False):  # float32 even inside a bf16 autocast forward
        for b in range(B):
            kb = k[b].float().repeat_interleave(g, dim=0) if g > 1 else k[b].float()
            logits = torch.matmul(q[b].float(), kb.transpose(-1, -2)) * scale
            logits = logits.masked_fill(~causal, -math.inf)
            out = torch.maximum(out, logits.amax(dim=(-1, -2)))
    return out


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of `GPT`. Every size is validated on construction (ValueError naming the field)."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    seq_len: int
    qk_norm: bool = True
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    residual_scale: float = 1.0
    """Multiplies each block's residual branch output before it is added (``h + r * f(h)``); 1.0 is the
    plain transformer, 0.0 disables every block. Ignored by nGPT (its ``alpha`` play this role)."""
    ngpt: bool = False
    ngpt_normalize_every: int = 1
    """nGPT lazy projection: renormalize the weights every k optimizer steps (1 = every step)."""
    dropout: float = 0.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "ffn_dim",
            "seq_len",
            "ngpt_normalize_every",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name}: must be an int, got {type(v).__name__} {v!r}")
            if v <= 0:
                raise ValueError(f"{name}: must be positive, got {v}")
        for name in ("qk_norm", "tie_embeddings", "ngpt"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: must be a bool, got {getattr(self, name)!r}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model: {self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(f"n_kv_heads: n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        if (self.d_model // self.n_heads) % 2 != 0:
            raise ValueError(f"d_model: head dim {self.d_model // self.n_heads} must be even for RoPE")
        if not (math.isfinite(self.rope_theta) and self.rope_theta > 0):
            raise ValueError(f"rope_theta: must be a positive finite float, got {self.rope_theta}")
        if not math.isfinite(self.residual_scale):
            raise ValueError(f"residual_scale: must be finite, got {self.residual_scale}")
        if self.dropout != 0.0:
            raise ValueError(f"dropout: only 0.0 is supported, got {self.dropout}")
        if not (math.isfinite(self.init_std) and self.init_std > 0):
            raise ValueError(f"init_std: must be a positive finite float, got {self.init_std}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# 89,220,352 parameters (63,464,704 outside the tied embedding); see docs/data.md.
_88M = ModelConfig(vocab_size=50304, d_model=512, n_layers=22, n_heads=8, n_kv_heads=4, ffn_dim=2048, seq_len=2048)
_TINY = ModelConfig(vocab_size=4096, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=512, seq_len=256)

MODEL_CONFIGS: dict[str, ModelConfig] = {
    "88m": _88M,
    "tiny": _TINY,
    "tiny_ngpt": replace(_TINY, tie_embeddings=False, ngpt=True),
    "88m_ngpt": replace(_88M, tie_embeddings=False, ngpt=True),
}


def get_model_config(name: str) -> ModelConfig:
    """The named config from `MODEL_CONFIGS` (ValueError listing the names otherwise)."""
    try:
        return MODEL_CONFIGS[name]
    except KeyError:
        raise ValueError(f"model: unknown config {name!r}; known: {sorted(MODEL_CONFIGS)}") from None


def count_params(cfg: ModelConfig) -> int:
    """Number of parameters of ``GPT(cfg)`` from the config alone (no allocation)."""
    d, hd = cfg.d_model, cfg.head_dim
    kv = cfg.n_kv_heads * hd
    attn = d * d + 2 * d * kv + d * d
    mlp = 2 * d * cfg.ffn_dim
    if cfg.ngpt:
        per_block = attn + mlp + 2 * d + hd + cfg.ffn_dim  # alphas, s_qk (per head dim), s_u
        extra = cfg.vocab_size  # s_z
    else:
        per_block = attn + mlp + 2 * d + (2 * hd if cfg.qk_norm else 0)
        extra = d  # final norm
    emb = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return emb + cfg.n_layers * per_block + extra


def _justnorm(x: Tensor, dim: int = -1) -> Tensor:
    """``x / ||x||`` along ``dim`` (nGPT ``justnorm``), computed in float32."""
    xf = x.float()
    out: Tensor = (xf / xf.norm(p=2, dim=dim, keepdim=True).clamp_min(1e-12)).to(x.dtype)
    return out


class _Scale(nn.Module):
    """Learnable vector with nGPT's scale trick: effective value ``param * init_value / init_scaling``."""

    def __init__(self, dim: int, init_value: float, init_scaling: float) -> None:
        super().__init__()
        self.ratio = init_value / init_scaling
        self.init_scaling = init_scaling
        self.weight = nn.Parameter(torch.full((dim,), init_scaling))

    def forward(self) -> Tensor:
        return self.weight * self.ratio


def rope_cache(seq_len: int, head_dim: int, theta: float, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """``cos, sin`` of shape ``[seq_len, head_dim/2]`` for RoPE (Su et al. 2021, eq. 34)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    t = torch.arange(seq_len, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    return freqs.cos(), freqs.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x [B, H, T, hd]`` by position; pairs ``(x[..., i], x[..., i + hd/2])`` (half-split form)."""
    T = x.shape[-2]
    c, s = cos[:T].to(x.dtype), sin[:T].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, hd = cfg.d_model, cfg.head_dim
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, hd
        self.q = nn.Linear(d, cfg.n_heads * hd, bias=False)
        self.k = nn.Linear(d, cfg.n_kv_heads * hd, bias=False)
        self.v = nn.Linear(d, cfg.n_kv_heads * hd, bias=False)
        self.o = nn.Linear(cfg.n_heads * hd, d, bias=False)
        self.q_norm: nn.Module | None = None
        self.k_norm: nn.Module | None = None
        self.s_qk: _Scale | None = None
        self.record_max_logits = False
        """Opt-in (`GPT.record_max_logits`): training forwards keep each head's largest causal logit."""
        self.max_logits: Tensor | None = None
        """``[n_heads]`` running max since the last `GPT.pop_max_logits` (harness/logit_clip.py)."""
        if cfg.ngpt:
            self.s_qk = _Scale(hd, 1.0, 1.0 / math.sqrt(d))
        elif cfg.qk_norm:
            self.q_norm = nn.RMSNorm(hd, eps=1e-6)
            self.k_norm = nn.RMSNorm(hd, eps=1e-6)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.hd).transpose(1, 2)
        k = self.k(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = self.v(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        scale: float | None = None
        if self.s_qk is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            s = self.s_qk().to(q.dtype)
            q, k = s * _justnorm(q), s * _justnorm(k)
            scale = math.sqrt(self.hd)
        else:
            if self.q_norm is not None and self.k_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.record_max_logits and self.training:
            s_max = head_max_logits(q, k, 1.0 / math.sqrt(self.hd) if scale is None else scale)
            self.max_logits = s_max if self.max_logits is None else torch.maximum(self.max_logits, s_max)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=self.n_kv != self.n_heads)
        out: Tensor = self.o(y.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))
        return out


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.proj = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)
        self.s_u: _Scale | None = _Scale(cfg.ffn_dim, 1.0, 1.0) if cfg.ngpt else None
        self.u_mult = math.sqrt(cfg.d_model)

    def forward(self, x: Tensor) -> Tensor:
        u = self.fc(x)
        if self.s_u is not None:
            u = u * (self.s_u() * self.u_mult).to(u.dtype)
        out: Tensor = self.proj(F.relu(u).square())
        return out


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)
        if cfg.ngpt:
            scaling = 1.0 / math.sqrt(cfg.d_model)
            self.attn_alpha = _Scale(cfg.d_model, 0.05, scaling)
            self.mlp_alpha = _Scale(cfg.d_model, 0.05, scaling)
        else:
            self.attn_norm = nn.RMSNorm(cfg.d_model, eps=1e-6)
            self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=1e-6)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        if self.cfg.ngpt:
            # nGPT eq. 10-11: h <- Norm(h + |alpha| (Norm(f(h)) - h)), h already on the sphere.
            a = self.attn_alpha().abs().to(h.dtype)
            h = _justnorm(h + a * (_justnorm(self.attn(h, cos, sin)) - h))
            m = self.mlp_alpha().abs().to(h.dtype)
            return _justnorm(h + m * (_justnorm(self.mlp(h)) - h))
        r = self.cfg.residual_scale
        h = h + r * self.attn(self.attn_norm(h), cos, sin)
        out: Tensor = h + r * self.mlp(self.mlp_norm(h))
        return out


class GPT(nn.Module):
    """Decoder-only LM; ``forward(idx, targets) -> (logits [B, T, V] float32, mean CE loss or None)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"cfg: expected ModelConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.norm_f: nn.Module | None = None if cfg.ngpt else nn.RMSNorm(cfg.d_model, eps=1e-6)
        self.lm_head: nn.Linear | None = None
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.s_z: _Scale | None = _Scale(cfg.vocab_size, 1.0, 1.0 / math.sqrt(cfg.d_model)) if cfg.ngpt else None
        cos, sin = rope_cache(cfg.seq_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deterministic given the torch RNG state (call ``torch.manual_seed`` first).

        Standard: every matrix ~ N(0, init_std^2), ``o``/``proj`` scaled by ``1/sqrt(2 n_layers)`` (GPT-2);
        norm weights 1. nGPT: N(0, 1/d) then `normalize_weights`; the scale vectors keep their init.
        """
        cfg = self.cfg
        std = 1.0 / math.sqrt(cfg.d_model) if cfg.ngpt else cfg.init_std
        out_std = std if cfg.ngpt else std / math.sqrt(2 * cfg.n_layers)
        nn.init.normal_(self.embed.weight, std=std)
        for blk in self.blocks:
            assert isinstance(blk, Block)
            for lin in (blk.attn.q, blk.attn.k, blk.attn.v, blk.mlp.fc):
                nn.init.normal_(lin.weight, std=std)
            for lin in (blk.attn.o, blk.mlp.proj):
                nn.init.normal_(lin.weight, std=out_std)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=std)
        for name, p in self.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
        for mod in self.modules():
            if isinstance(mod, _Scale):
                mod.weight.fill_(mod.init_scaling)
        if cfg.ngpt:
            self.normalize_weights()

    def record_max_logits(self, enabled: bool = True) -> None:
        """Turn the per-head max-logit recording of the training forwards on or off (QK-Clip; harness/logit_clip.py).
        Costs one extra ``Q K^T`` per layer, without gradient (measured in docs/results/qk_clip/README.md)."""
        for blk in self.blocks:
            assert isinstance(blk, Block)
            blk.attn.record_max_logits = enabled
            blk.attn.max_logits = None

    def pop_max_logits(self) -> Tensor | None:
        """``[n_layers, n_heads]``: each head's largest logit since the last call (then reset); None if no
        training forward was recorded."""
        attns = [blk.attn for blk in self.blocks if isinstance(blk, Block)]
        if any(a.max_logits is None for a in attns):
            return None
        out = torch.stack([a.max_logits for a in attns if a.max_logits is not None])
        for a in attns:
            a.max_logits = None
        return out

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied embedding counted once); ``non_embedding`` drops embed and lm_head."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed.weight.numel()
            if self.lm_head is not None:
                n -= self.lm_head.weight.numel()
        return n

    def ngpt_sphere_axes(self) -> dict[str, str]:
        """Parameter name -> ``"row"`` / ``"col"`` for the weights nGPT keeps on the unit sphere.

        Matches `MuonSpec.sphere_axis` on the ``[out, in]`` matrix view: rows of embed/lm_head/q/k/v/fc,
        columns of o/proj. Empty for the standard model.
        """
        if not self.cfg.ngpt:
            return {}
        axes: dict[str, str] = {"embed.weight": "row"}
        if self.lm_head is not None:
            axes["lm_head.weight"] = "row"
        for i in range(self.cfg.n_layers):
            for n in ("q", "k", "v"):
                axes[f"blocks.{i}.attn.{n}.weight"] = "row"
            axes[f"blocks.{i}.attn.o.weight"] = "col"
            axes[f"blocks.{i}.mlp.fc.weight"] = "row"
            axes[f"blocks.{i}.mlp.proj.weight"] = "col"
        return axes

    @torch.no_grad()
    def normalize_weights(self) -> None:
        """Project the nGPT weights back to the sphere (NVIDIA/ngpt ``normalize_matrices``); in place.

        No-op for the standard model. ``"row"``: ``W / ||W||`` along dim 1; ``"col"``: along dim 0.
        """
        params = dict(self.named_parameters())
        for name, axis in self.ngpt_sphere_axes().items():
            w = params[name]
            w.copy_(_justnorm(w, dim=1 if axis == "row" else 0))

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if idx.dim() != 2:
            raise ValueError(f"idx: expected [B, T], got shape {tuple(idx.shape)}")
        T = idx.shape[1]
        if self.cfg.seq_len < T:
            raise ValueError(f"idx: sequence length {T} exceeds seq_len={self.cfg.seq_len}")
        if targets is not None and targets.shape != idx.shape:
            raise ValueError(f"targets: shape {tuple(targets.shape)} != idx shape {tuple(idx.shape)}")
        h = self.embed(idx)
        cos, sin = self.rope_cos, self.rope_sin
        for blk in self.blocks:
            h = blk(h, cos, sin)
        if self.norm_f is not None:
            h = self.norm_f(h)
        w_out = self.embed.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(h, w_out).float()
        if self.s_z is not None:
            logits = logits * self.s_z().float()
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss


def effective_rank(w: Tensor) -> float:
    """Effective rank ``exp(H(p))``, ``p = s / sum(s)`` over the singular values (Roy & Vetterli 2007).

    ``w`` is viewed as ``[shape[0], -1]``; a 1-D tensor has rank 1 (0 if zero); an all-zero matrix 0.
    """
    if w.dim() == 0:
        raise ValueError("w: expected a tensor with at least one dimension")
    m = w.detach().reshape(w.shape[0], -1) if w.dim() > 1 else w.detach().reshape(1, -1)
    s = torch.linalg.svdvals(m.double())
    total = s.sum()
    if not torch.isfinite(total):
        raise ValueError("w: contains non-finite values")
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))
