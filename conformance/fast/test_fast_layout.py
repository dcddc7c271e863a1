"""`muonlab.fast.layout`: validation of ``matrix_dims`` and the matrix view (docs/fast.md "Real model code")."""

from __future__ import annotations

import pytest
import torch

from muonlab.fast.layout import check_group_matrix_dims, check_matrix_dims, matrix_shape, matrix_view


@pytest.mark.parametrize(
    ("shape", "dims", "want"),
    [
        ((3, 4), None, None),
        ((3, 4), (0, 1), None),
        ((3, 4), (-2, -1), None),
        ((3, 4), (1, 0), (1, 0)),
        ((3, 4), [1, 0], (1, 0)),
        ((5, 3, 4), (-1, -2), (2, 1)),
        ((6, 2, 3, 3), (0, 1), (0, 1)),
    ],
)
def test_check_matrix_dims_normalizes(shape: tuple[int, ...], dims: object, want: object) -> None:
    assert check_matrix_dims(shape, dims, "p") == want


@pytest.mark.parametrize(
    ("shape", "dims", "exc", "match"),
    [
        ((4,), None, ValueError, r"w: shape \(4,\) has 1 dim"),
        ((3, 4), (0,), ValueError, "w: matrix_dims must be a pair"),
        ((3, 4), (0, 1, 2), ValueError, "w: matrix_dims must be a pair"),
        ((3, 4), "01", TypeError, "w: matrix_dims must be None or a pair"),
        ((3, 4), 1, TypeError, "w: matrix_dims must be None or a pair"),
        ((3, 4), (0, 2), ValueError, "w: matrix_dims col_dim=2 is out of range"),
        ((3, 4), (-3, 1), ValueError, "w: matrix_dims row_dim=-3 is out of range"),
        ((3, 4), (1, -1), ValueError, "w: matrix_dims .* name the same dim 1 twice"),
        ((3, 4), (0.0, 1), TypeError, "w: matrix_dims row_dim must be an int"),
        ((3, 4), (True, 0), TypeError, "w: matrix_dims row_dim must be an int"),
    ],
)
def test_check_matrix_dims_rejects(shape: tuple[int, ...], dims: object, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        check_matrix_dims(shape, dims, "w")


def test_group_matrix_dims_parallel_to_params() -> None:
    shapes = [(3, 4), (4, 3), (2, 3, 4)]
    assert check_group_matrix_dims([None, (1, 0), None], shapes, "g") == [None, (1, 0), None]
    with pytest.raises(ValueError, match=r"g: has 2 entries for 3 params"):
        check_group_matrix_dims([None, None], shapes, "g")
    with pytest.raises(TypeError, match="g: expected a list parallel"):
        check_group_matrix_dims(None, shapes, "g")
    with pytest.raises(ValueError, match=r"g\[1\]: matrix_dims col_dim=2 is out of range"):
        check_group_matrix_dims([None, (0, 2), None], shapes, "g")


@pytest.mark.parametrize(
    ("shape", "dims"), [((3, 4), None), ((3, 4), (1, 0)), ((2, 3, 4), (2, 1)), ((5, 2, 3, 4), (0, 2))]
)
def test_matrix_view_is_a_movedim_view(shape: tuple[int, ...], dims: tuple[int, int] | None) -> None:
    t = torch.randn(shape)
    v = matrix_view(t, dims)
    assert tuple(v.shape) == matrix_shape(shape, dims)
    assert v.data_ptr() == t.data_ptr()  # a view, not a copy
    if dims is None:
        assert v is t
    else:
        torch.testing.assert_close(v, torch.movedim(t, dims, (-2, -1)), rtol=0, atol=0)
    v.mul_(2.0)  # in-place on the view lands in the tensor
    assert v.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()


def test_conv1d_layout_transposes() -> None:
    w = torch.arange(12.0).reshape(4, 3)  # GPT-2 Conv1D: [in=4, out=3]
    v = matrix_view(w, check_matrix_dims(w.shape, (1, 0), "c_attn.weight"))
    assert tuple(v.shape) == (3, 4)
    torch.testing.assert_close(v, w.T, rtol=0, atol=0)
