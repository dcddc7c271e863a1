"""Pinned regression values: a 3-step trajectory per preset on fixed 6x4 and 4x6 matrices.

A failure means a preset or the math changed. If the change is intended, regenerate with
``python conformance/reference/pinned_cases.py`` and review the diff of ``data/pinned.json``.
"""

from __future__ import annotations

import json

import pytest
from pinned_cases import DATA, SHAPES, trajectory

from muonlab.reference import PRESETS

PINNED = json.loads(DATA.read_text())


def test_every_preset_is_pinned() -> None:
    assert sorted(PINNED) == sorted(PRESETS)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(PRESETS))
def test_pinned_trajectory(name: str, shape: tuple[int, int]) -> None:
    expected = PINNED[name][f"{shape[0]}x{shape[1]}"]
    got = trajectory(name, shape)
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-10, abs=1e-14), key
