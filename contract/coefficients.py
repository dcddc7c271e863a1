"""Named Newton-Schulz / Polar Express coefficient sets.

Each set is a tuple of ``(a, b, c)`` triples, one per iteration of docs/variants.md "Orthogonalization
(stage 3)" (the odd quintic ``a s + b s^3 + c s^5`` on every singular value).
When a spec asks for more iterations than a set has triples, the last triple repeats (the rule of
NoahAmsel/PolarExpress ``basic.py``); when it asks for fewer, the first ``ns_steps`` triples are used.

Sources (docs/variants.md "Orthogonalization", its table of sets; [S §0.3, §5.2]):

* ``keller``: KellerJordan/Muon ``zeropower_via_newtonschulz5``, ``(3.4445, -4.7750, 2.0315)``; also
  Moonlight Eq. 2, torch.optim.Muon, optax ``'standard'``, the official NorMuon.
* ``leloykun``: modded-nanogpt record 2025-02-14_OptCoeffs; dion ``zeropower_via_newtonschulz5``; optax ``'dion'``.
* ``polar_express``: modded-nanogpt ``polar_express_coeffs`` (= dion ``_POLAR_EXPRESS_COEFFS``), i.e.
  ``optimal_composition(l=1e-3, num_iters=5, safety_factor_eps=0.02, cushion=0.02)``; use with norm scale 1.02.
* ``polar_express_paper``: arXiv 2505.16932 listing (PolarExpress ``basic.py``): 8 triples, the first seven
  divided by ``(1.01, 1.01^3, 1.01^5)``; use with norm scale 1.01.
* ``cubic``: the classical cubic Newton-Schulz iteration ``X <- 1.5 X - 0.5 X X^T X``.
* ``accurate``: ``(2, -1.5, 0.5)`` (modded-nanogpt track 3 ``train_gpt_simple.py``), typically x12.
* ``gram_polar_express``: Dao-AILab/gram-newton-schulz ``POLAR_EXPRESS_COEFFICIENTS`` (the default of its Gram
  Newton-Schulz, and of dion's ``use_gram_newton_schulz``): the first five paper triples, *each* divided by
  ``(1.05, 1.05^3, 1.05^5)``; norm scale 1.
* ``turbo_aol``: Turbo-Muon (thib-s/flash-newton-schulz ``newton_schulz_triton_aol`` at cdb03db; dion
  ``newton_schulz_triton_fast``): 4 steps designed for the ``"aol"`` prescale.
* ``turbo_aol_b73111d``: the same function's first set (b73111d), which NeMo ships as ``coefficient_type="aol"``
  (with the Frobenius prescale, cycled).
* ``deepseekv4``: NS5-Keller x 8 then ``(2, -1.5, 0.5)`` x 2 (NeMo ``"deepseekv4"``, the DeepSeek-V4 schedule).
* ``nemo_polar_express``, ``cans``, ``cubic5``: NVIDIA-NeMo/Emerging-Optimizers ``muon_utils._COEFFICIENT_SETS``
  (ca0f167): the paper's 8 Polar Express triples divided by ``(1.01, 1.01^3, 1.01^5)`` and rounded to 4 decimals
  (no x1.01 on the norm); CANS (arXiv 2506.10935); five cubic steps (``c = 0``, arXiv 2606.00371, exactly 5
  steps). NeMo's ``"simple"`` is ``keller``, ``"quintic"`` is ``leloykun`` and ``"aol"`` is ``turbo_aol_b73111d``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Final, Literal

Triple = tuple[float, float, float]
CoefficientSet = tuple[Triple, ...]

KELLER: Final[CoefficientSet] = ((3.4445, -4.7750, 2.0315),)

LELOYKUN: Final[CoefficientSet] = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)

POLAR_EXPRESS: Final[CoefficientSet] = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

_PAPER_RAW: Final[CoefficientSet] = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)


def _with_safety(raw: CoefficientSet, safety: float) -> CoefficientSet:
    """Divide every triple but the last by ``(s, s^3, s^5)``: ``p(x) -> p(x / s)`` (PolarExpress ``basic.py``)."""
    out = [(a / safety, b / safety**3, c / safety**5) for a, b, c in raw[:-1]]
    return (*out, raw[-1])


POLAR_EXPRESS_PAPER: Final[CoefficientSet] = _with_safety(_PAPER_RAW, 1.01)

CUBIC: Final[CoefficientSet] = ((1.5, -0.5, 0.0),)

ACCURATE: Final[CoefficientSet] = ((2.0, -1.5, 0.5),)

GRAM_POLAR_EXPRESS: Final[CoefficientSet] = tuple(
    (a / 1.05, b / 1.05**3, c / 1.05**5)
    for a, b, c in _PAPER_RAW[:5]  # the safety factor on all five
)

TURBO_AOL: Final[CoefficientSet] = (
    (4.6051, -9.6552, 5.6769),
    (4.7505, -6.0861, 2.1790),
    (2.7763, -2.3190, 0.5523),
    (2.4231, -2.2861, 0.8193),
)

TURBO_AOL_B73111D: Final[CoefficientSet] = (
    (4.0098, -7.0585, 2.4635),
    (3.4585, -5.5479, 2.5959),
    (2.7573, -3.2939, 1.4254),
    (2.7215, -3.0494, 1.3169),
)

DEEPSEEK_V4: Final[CoefficientSet] = KELLER * 8 + ACCURATE * 2

NEMO_POLAR_EXPRESS: Final[CoefficientSet] = (
    (8.2051, -22.9019, 16.4607),
    (4.0664, -2.8612, 0.5184),
    (3.9096, -2.8234, 0.5250),
    (3.2856, -2.4153, 0.4853),
    (2.2779, -1.6198, 0.3985),
    (1.8726, -1.2307, 0.3585),
    (1.8564, -1.2132, 0.3568),
    (1.8750, -1.2500, 0.3750),
)

CANS: Final[CoefficientSet] = (
    (8.4703, -25.1081, 18.6293),
    (4.1828, -3.1087, 0.5806),
    (3.9619, -2.9541, 0.5630),
    (3.2866, -2.4647, 0.5074),
    (2.2737, -1.6447, 0.4162),
)

CUBIC5: Final[CoefficientSet] = (
    (3.3656576, -3.3420992, 0.0),
    (2.5744352, -1.4957376, 0.0),
    (2.5368962, -1.4312570, 0.0),
    (2.4418906, -1.2764040, 0.0),
    (2.2230472, -0.9630650, 0.0),
)

COEFFICIENT_SETS: Final[dict[str, CoefficientSet]] = {
    "keller": KELLER,
    "leloykun": LELOYKUN,
    "polar_express": POLAR_EXPRESS,
    "polar_express_paper": POLAR_EXPRESS_PAPER,
    "cubic": CUBIC,
    "accurate": ACCURATE,
    "gram_polar_express": GRAM_POLAR_EXPRESS,
    "turbo_aol": TURBO_AOL,
    "turbo_aol_b73111d": TURBO_AOL_B73111D,
    "deepseekv4": DEEPSEEK_V4,
    "nemo_polar_express": NEMO_POLAR_EXPRESS,
    "cans": CANS,
    "cubic5": CUBIC5,
}

DESIGNED_PRESCALE: Final[dict[str, str]] = {"turbo_aol": "aol", "turbo_aol_b73111d": "aol"}
"""Sets designed for a prescale other than Frobenius (their first triple expects that input band)."""

EXACT_STEPS: Final[dict[str, int]] = {"cubic5": 5}
"""Sets that admit exactly this many steps (NeMo raises otherwise)."""

CoefficientPolicy = Literal["repeat_last", "cycle"]


class CoefficientScheduleWarning(UserWarning):
    """A coefficient set used where it was not designed to run: cycled past its end, or after another prescale."""


def resolve_coefficients(coefficients: str | CoefficientSet) -> CoefficientSet:
    """Return the triples for a set name, or validate and return explicit triples."""
    if isinstance(coefficients, str):
        try:
            return COEFFICIENT_SETS[coefficients]
        except KeyError:
            known = ", ".join(sorted(COEFFICIENT_SETS))
            raise ValueError(
                f"ns_coefficients: unknown coefficient set {coefficients!r}; known sets: {known}"
            ) from None
    if len(coefficients) == 0:
        raise ValueError("ns_coefficients: an explicit coefficient list must hold at least one (a, b, c) triple")
    for i, triple in enumerate(coefficients):
        if len(triple) != 3:
            raise ValueError(f"ns_coefficients[{i}]: expected an (a, b, c) triple, got {triple!r}")
    return tuple((float(a), float(b), float(c)) for a, b, c in coefficients)


POLICIES: Final[dict[CoefficientPolicy, Callable[[int, int], int]]] = {
    "repeat_last": lambda k, size: min(k, size - 1),  # PolarExpress basic.py; NeMo polar_express, cans, deepseekv4
    "cycle": lambda k, size: k % size,  # NeMo simple, quintic, aol: the steps wrap around the list
}
"""``ns_policy`` -> the index of the triple applied at iteration ``k`` of a set of ``size`` triples."""


def schedule(
    coefficients: str | CoefficientSet, ns_steps: int, policy: CoefficientPolicy = "repeat_last"
) -> CoefficientSet:
    """The ``ns_steps`` triples actually applied: the first ``ns_steps``; beyond the list, by ``policy``."""
    triples = resolve_coefficients(coefficients)
    if policy not in POLICIES:
        raise ValueError(f"ns_policy: expected one of {', '.join(map(repr, POLICIES))}, got {policy!r}")
    return tuple(triples[POLICIES[policy](k, len(triples))] for k in range(ns_steps))


def warn_schedule(coefficients: str | CoefficientSet, ns_steps: int, policy: CoefficientPolicy, prescale: str) -> None:
    """Warn (`CoefficientScheduleWarning`) when a set runs outside its design: cycled back to its first triple (a
    designed composition restarted on converged singular values knocks them down: NeMo's ``"aol"`` at 5 steps
    maps them near 0.585), or after a prescale other than the one it was designed for."""
    triples = resolve_coefficients(coefficients)
    label = coefficients if isinstance(coefficients, str) else "explicit"
    if policy == "cycle" and len(triples) > 1 and ns_steps > len(triples):
        first = triples[0]
        warnings.warn(
            f"ns_coefficients {label!r}: {ns_steps} steps cycle past its {len(triples)} triples, so step "
            f"{len(triples) + 1} applies the first triple again (p(1) = {sum(first):.3f}): use ns_steps <= "
            f"{len(triples)} or ns_policy='repeat_last'",
            CoefficientScheduleWarning,
            stacklevel=6,
        )
    designed = DESIGNED_PRESCALE.get(label)
    if designed is not None and prescale != designed:
        warnings.warn(
            f"ns_coefficients {label!r} is designed for prescale={designed!r}, used with prescale={prescale!r}",
            CoefficientScheduleWarning,
            stacklevel=6,
        )
