"""The step meter itself (`budget.StepMeter`) on cases whose cost is known by hand: launches, syncs, host ops and
transient bytes. The budgets measured with it are in test_fast_budget.py."""

from __future__ import annotations

import budget
import pytest
import torch
import triton
import triton.language as tl

from muonlab.fast.kernels._common import interpreted


@triton.jit
def _add_one(x_ptr, n, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = offs < n
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=keep) + 1.0, mask=keep)


def test_clone_counts_its_bytes_and_frees_them() -> None:
    x = torch.randn(64, 32)
    with budget.StepMeter() as m:
        y = x.clone()
        assert m.retained_bytes == x.nbytes
        del y
    assert m.peak_bytes == x.nbytes
    assert m.retained_bytes == 0
    assert m.launches == 1 and m.breakdown == {"clone": 1}


def test_peak_is_the_largest_simultaneous_total() -> None:
    x = torch.randn(100, 10)
    with budget.StepMeter() as m:
        for _ in range(4):
            y = x * 2.0  # the previous y dies only after the new one exists: two alive at once
        z = y.sum(dim=0)
        del y
    assert m.peak_bytes == 2 * x.nbytes  # during a mul; by the sum one y is gone
    assert m.retained_bytes == z.nbytes
    assert m.breakdown == {"mul": 4, "sum": 1}


def test_views_in_place_and_out_cost_nothing_new() -> None:
    x, w = torch.randn(8, 6), torch.randn(6, 4)
    out = torch.empty(8, 4)
    with budget.StepMeter() as m:
        v = x.view(48).reshape(6, 8).mT.detach()  # aliases: no launch, no bytes
        a, b = torch.split(x, 4)
        x.mul_(0.5)
        torch.mm(x, w, out=out)
        del v, a, b
    assert m.peak_bytes == 0
    assert m.breakdown == {"mul_": 1, "mm": 1}


def test_a_view_keeps_a_new_storage_alive() -> None:
    x = torch.randn(10, 10)
    with budget.StepMeter() as m:
        y = x + 1.0
        row = y[0]
        del y
        assert m.retained_bytes == x.nbytes  # the row still holds the whole storage
        del row
    assert m.retained_bytes == 0


def test_foreach_counts_once_and_empty_is_no_launch() -> None:
    xs = [torch.randn(3, 3) for _ in range(5)]
    with budget.StepMeter() as m:
        ys = torch._foreach_add(xs, 1.0)
        torch._foreach_mul_(xs, 2.0)
        e = torch.empty(7, 7)
    assert m.breakdown == {"_foreach_add": 1, "_foreach_mul_": 1}
    assert m.peak_bytes == sum(y.nbytes for y in ys) + e.nbytes


@pytest.mark.parametrize(
    ("read", "name"),
    [
        (lambda t: t.sum().item(), "_local_scalar_dense"),
        (lambda t: bool((t > 0).any()), "_local_scalar_dense"),
        (lambda t: t.tolist(), "tolist"),
        (lambda t: t.numpy(), "numpy"),
        (lambda t: torch.nonzero(t), "nonzero"),
        (lambda t: t[t > 0], "index"),
        (lambda t: torch.masked_select(t, t > 0), "masked_select"),
        (lambda t: torch.equal(t, t), "equal"),
    ],
)
def test_device_reads_are_syncs(read: object, name: str) -> None:
    t = torch.randn(4, 4)
    with budget.StepMeter() as m:
        read(t)  # type: ignore[operator]
    assert m.sync_breakdown.get(name, 0) >= 1, m.sync_breakdown


def test_host_scalars_are_neither_launches_nor_syncs() -> None:
    step = torch.tensor(0.0)  # as Optimizer.state[p]["step"]: a 0-D CPU tensor on every device
    g = torch.randn(5)
    with budget.StepMeter() as m:
        step += 1
        n = int(step.item())
        flag = g.abs().max() > 1.0  # 0-D, but derived from device data
        ok = ~flag
        _ = torch.where(ok, g, 0.0)
    assert n == 1
    assert m.host_ops == 1 and m.host_reads == 1
    assert m.syncs == 0
    # where's Python 0.0 becomes a device scalar (a fill launch on CUDA)
    assert m.breakdown == {"abs": 1, "max": 1, "gt": 1, "bitwise_not": 1, "scalar_tensor": 1, "where": 1}


def test_factory_with_a_device_is_device_data() -> None:
    with budget.StepMeter() as m:
        z = torch.zeros((), device="cpu")
        z.item()
    assert m.syncs == 1 and m.breakdown == {"zeros": 1}


@pytest.mark.skipif(not interpreted(_add_one), reason="needs TRITON_INTERPRET=1 (set by conformance/conftest.py)")
def test_triton_launch_counts_once_without_its_interpreter_traffic() -> None:
    x = torch.zeros(100)
    with budget.StepMeter() as m:
        _add_one[(4,)](x, 100, BLOCK=32)
        _add_one[(4,)](x, 100, BLOCK=32)
    assert torch.equal(x, torch.full((100,), 2.0))
    assert m.breakdown == {"triton:_add_one": 2}
    assert m.triton_launches == 2 and m.torch_launches == 0
    assert m.peak_bytes == 0 and m.syncs == 0


def test_hooks_are_removed_on_exit() -> None:
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    before = (JITFunction.run, InterpretedFunction.run, torch.Tensor.tolist, torch.Tensor.numpy)
    with pytest.raises(RuntimeError, match="boom"), budget.StepMeter():
        raise RuntimeError("boom")
    assert (JITFunction.run, InterpretedFunction.run, torch.Tensor.tolist, torch.Tensor.numpy) == before


def test_gpt2_fixture_shapes_and_twins() -> None:
    shapes = budget.gpt2_hidden_shapes(0.25)
    assert len(shapes) == 72
    assert shapes[:6] == [(192, 192)] * 4 + [(768, 192), (192, 768)]
    a, b = budget.gpt2_hidden(1 / 16, torch.bfloat16), budget.gpt2_hidden(1 / 16, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and p.grad is not None and p.grad.dtype == torch.bfloat16 for p in a)
    assert all(torch.equal(p, q) and torch.equal(p.grad, q.grad) for p, q in zip(a, b, strict=True))  # type: ignore[arg-type]
    assert budget.param_bytes(a) == 2 * 12 * (4 * 48 * 48 + 2 * 4 * 48 * 48)
    with pytest.raises(ValueError, match="scale"):
        budget.gpt2_hidden_shapes(0.3)


def test_torch_muon_step_is_what_its_source_says() -> None:
    """torch.optim.Muon, per matrix: lerp_ + lerp (Nesterov), norm, clamp, div_, 5 x (mm, 2 addmm), mul_ (decay),
    add_ (update); the bf16 cast of fp32 momentum adds one ``_to_copy``; transients are one matrix's NS temporaries."""
    ref = budget.optimizer_pair(1 / 48, torch.float32)[1]
    cost = budget.measure_step(ref.step)
    assert cost.syncs == 0
    assert cost.breakdown["mm"] == 5 * 72 and cost.breakdown["addmm"] == 10 * 72
    assert cost.launches == 72 * 23
    assert 0 < cost.peak_bytes < 0.1 * budget.param_bytes(budget.gpt2_hidden(1 / 48))


def test_metadata_ops_in_place_are_not_launches() -> None:
    x = torch.randn(3, 1, 4)
    with budget.StepMeter() as m:
        y = x.clone()
        y.squeeze_(1)
        y.unsqueeze_(0)
        y.transpose_(0, 1)
        z = torch.ops.aten._unsafe_view(y.clone(), (12,))
    assert m.breakdown == {"clone": 2}
    assert z.shape == (12,)
