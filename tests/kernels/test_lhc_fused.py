"""The numba passes of lhc_fused against the array code they replace for numpy inputs: every
column of two leading objects and every histogram bin bit for bit, eta to 2 ulp (numpy's log may
be its SIMD one, the pass takes libm's; each is within an ulp of the exact value)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.kernels.lhc_hist import Axis, fill, fill_array
from engine.kernels.lhc_kinematics import leading_regular, leading_regular_array

CARTESIAN = ("px", "py", "pz", "E")


def _muons(rng, events: int, dtype=np.float64) -> list[dict[str, np.ndarray]]:
    """Two objects per event, with the awkward cases: pt ties, pt = 0 (eta +-inf, or NaN with
    pz = 0), NaN, components whose squares overflow, E^2 < p^2, and events in several blocks."""
    objects = []
    for _ in range(2):
        px, py, pz = rng.normal(0, 30, (3, events))
        pz *= rng.exponential(2, events)
        energy = np.sqrt(px**2 + py**2 + pz**2 + rng.normal(0.011, 0.02, events))
        objects.append({"px": px, "py": py, "pz": pz, "E": energy, "q": rng.choice([-1, 1], events)})
    first, second = objects
    second["px"][:40], second["py"][:40] = -first["px"][:40], first["py"][:40]  # equal pt
    for o in objects:
        o["px"][40:50], o["py"][40:50] = 0.0, 0.0
        o["pz"][45:50] = 0.0
    first["px"][50:55] = np.nan
    second["pz"][55:60] = np.nan
    first["px"][60:62], first["pz"][62:64] = 1e200, -1e200
    first["q"] = first["q"].astype(np.int32)
    second["q"] = second["q"].astype(np.int32)
    with np.errstate(over="ignore"):  # 1e200 is inf in float32
        return [{c: (v.astype(dtype) if c in CARTESIAN else v) for c, v in o.items()} for o in objects]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("count", [1, 2, 3])
def test_dimuon_pass_equals_the_array_path(dtype, count):
    """10^4 + 7 events: two full blocks of the pass and a ragged one."""
    for seed in range(2):
        objects = _muons(np.random.default_rng(seed), 10_007, dtype)
        with np.errstate(over="ignore", invalid="ignore"):  # the squares of 1e200
            fused = leading_regular(objects, count, ("q",)).columns()
            reference = leading_regular_array(objects, count, ("q",)).columns()
        assert list(fused) == list(reference)
        for key, want in reference.items():
            got = fused[key]
            assert got.dtype == want.dtype, key
            if key.endswith("_eta"):
                np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want), err_msg=key)
                np.testing.assert_array_equal(got[~np.isfinite(got)], want[~np.isfinite(want)], err_msg=key)
                finite = np.isfinite(want)
                np.testing.assert_array_max_ulp(got[finite], want[finite], maxulp=2)
            else:
                np.testing.assert_array_equal(got, want, err_msg=key)


def test_dimuon_pass_orders_by_pt_and_keeps_ties_in_the_given_order():
    slow = {"px": np.array([1.0, 3.0, 2.0]), "py": np.zeros(3), "pz": np.array([1.0, 2.0, 3.0])}
    fast = {"px": np.array([2.0, 1.0, -2.0]), "py": np.zeros(3), "pz": np.array([-1.0, -2.0, -3.0])}
    for o in (slow, fast):
        o["E"] = np.sqrt(o["px"] ** 2 + o["pz"] ** 2)
        o["q"] = np.sign(o["pz"]).astype(np.int32)
    columns = leading_regular([slow, fast], 2, ("q",)).columns()
    np.testing.assert_array_equal(columns["1_pt"], [2.0, 3.0, 2.0])
    np.testing.assert_array_equal(columns["2_pt"], [1.0, 1.0, 2.0])
    np.testing.assert_array_equal(columns["1_q"], [-1.0, 1.0, 1.0])  # the tie keeps muon 1 first
    np.testing.assert_allclose(columns["1_eta"], np.arcsinh([-0.5, 2 / 3, 1.5]), rtol=1e-15)


def _fill_cases(rng, events: int):
    mass = rng.normal(90, 20, events)
    mass[::97], mass[5::101], mass[7::103], mass[9::107] = np.nan, np.inf, 120.0, 60.0
    eta = rng.normal(0, 1.5, events)
    third = rng.random(events)
    mask = rng.random(events) < 0.7
    weights = rng.exponential(1.0, events)
    axes = [Axis.from_regular(60, 60.0, 120.0), Axis.from_regular(7, -2.4, 2.4), Axis.from_regular(3, 0, 1)]
    return [mass, eta, third], axes, mask, weights


@pytest.mark.parametrize("naxes", [1, 2, 3])
def test_regular_fill_equals_the_array_fill_bin_for_bin(naxes):
    for events in (0, 1, 4095, 10_007):
        values, axes, mask, weights = _fill_cases(np.random.default_rng(events), events)
        values, axes = values[:naxes], axes[:naxes]
        for w in (None, weights):
            for m in (None, mask):
                got, want = fill(axes, values, w, m), fill_array(axes, values, w, m)
                np.testing.assert_array_equal(got, want, err_msg=f"{events} events, weights {w is not None}")


def test_variable_axes_and_other_inputs_take_the_array_fill():
    values, axes, mask, weights = _fill_cases(np.random.default_rng(1), 1000)
    variable = Axis(np.array([60.0, 80.0, 85.0, 95.0, 100.0, 120.0]), False)
    np.testing.assert_array_equal(
        fill([variable], values[:1], weights, mask), fill_array([variable], values[:1], weights, mask)
    )
    as_lists = [values[0].tolist()]
    np.testing.assert_array_equal(fill(axes[:1], as_lists), fill_array(axes[:1], [values[0]]))
