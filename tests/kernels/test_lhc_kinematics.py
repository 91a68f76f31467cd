"""Four-vector kinematics: conversions both ways and pair masses against known values."""

from __future__ import annotations

import awkward as ak
import numpy as np

from engine.kernels.lhc_kinematics import leading_objects, signed_mass, to_cartesian, to_polar


def test_polar_and_cartesian_round_trip():
    rng = np.random.default_rng(0)
    pt, eta, phi, mass = (
        rng.uniform(1, 100, 50),
        rng.uniform(-3, 3, 50),
        rng.uniform(-np.pi, np.pi, 50),
        rng.uniform(0, 10, 50),
    )
    back = to_polar(**to_cartesian(pt, eta, phi, mass))
    for name, values in (("pt", pt), ("eta", eta), ("phi", phi), ("mass", mass)):
        np.testing.assert_allclose(back[name], values, rtol=1e-9, atol=1e-7)


def test_back_to_back_muons_give_twice_the_energy():
    # two 45.6 GeV massless muons back to back: the pair mass is 91.2 GeV, its pt zero
    muons = ak.Array(
        [
            [
                {"px": 45.6, "py": 0.0, "pz": 0.0, "E": 45.6, "q": 1},
                {"px": -45.6, "py": 0.0, "pz": 0.0, "E": 45.6, "q": -1},
            ]
        ]
    )
    columns = leading_objects(muons, 2, ("q",))
    np.testing.assert_allclose(columns["12_mass"], [91.2])
    np.testing.assert_allclose(columns["12_pt"], [0.0], atol=1e-12)


def test_leading_objects_are_ordered_by_pt_and_padded_with_nan():
    objects = ak.Array(
        [
            [{"px": 1.0, "py": 0.0, "pz": 0.0, "E": 2.0}, {"px": 5.0, "py": 0.0, "pz": 0.0, "E": 6.0}],
            [],
            [{"px": 0.0, "py": 3.0, "pz": 4.0, "E": 5.0}],
        ]
    )
    columns = leading_objects(objects, 2)
    np.testing.assert_array_equal(columns["count"], [2, 0, 1])
    np.testing.assert_allclose(columns["1_pt"], [5.0, np.nan, 3.0])
    np.testing.assert_allclose(columns["2_pt"], [1.0, np.nan, np.nan])
    np.testing.assert_allclose(columns["1_mass"], [np.sqrt(11), np.nan, 0.0], atol=1e-12)
    np.testing.assert_allclose(columns["1_eta"][2], np.arcsinh(4 / 3))
    assert np.isnan(columns["12_mass"][1]) and np.isnan(columns["12_mass"][2])


def test_mass_of_unphysical_vectors_is_negative():
    assert signed_mass(np.array(1.0), np.array(2.0), np.array(0.0), np.array(0.0)) == -np.sqrt(3)


def _reference(events: list[list[dict]], count: int) -> dict[str, list[float]]:
    """Leading objects event by event in plain Python: sorted by pt (stable), padded with NaN."""
    out: dict[str, list[float]] = {}
    for objects in events:
        ranked = sorted(objects, key=lambda o: -np.hypot(o["px"], o["py"]))
        for i in range(count):
            o = ranked[i] if i < len(ranked) else None
            out.setdefault(f"{i + 1}_pt", []).append(np.hypot(o["px"], o["py"]) if o else np.nan)
            out.setdefault(f"{i + 1}_q", []).append(o["q"] if o else np.nan)
        pair = ranked[:2] if len(ranked) >= 2 else None
        total = {c: pair[0][c] + pair[1][c] for c in ("px", "py", "pz", "E")} if pair else None
        out.setdefault("12_mass", []).append(
            float(signed_mass(total["E"], total["px"], total["py"], total["pz"])) if total else np.nan
        )
    return out


def _random_events(rng, events: int, sizes) -> list[list[dict]]:
    result = []
    for _ in range(events):
        objects = []
        for _ in range(int(rng.choice(sizes))):
            px, py, pz = rng.normal(0, 30, 3)
            # equal pts now and then, to check that ties keep the stored order
            if objects and rng.random() < 0.2:
                px, py = -objects[-1]["px"], -objects[-1]["py"]
            objects.append(
                {
                    "px": px,
                    "py": py,
                    "pz": pz,
                    "E": float(np.sqrt(px**2 + py**2 + pz**2 + 0.011)),
                    "q": float(rng.choice([-1, 1])),
                }
            )
        result.append(objects)
    return result


def test_jagged_and_regular_paths_match_a_plain_python_reference():
    """Both numpy paths (flat columns, jagged collection) against event-by-event Python, pooled
    over seeds and over 1 to 3 leading objects, with empty events and pt ties."""
    from engine.kernels.lhc_kinematics import leading_regular

    for seed in range(3):
        rng = np.random.default_rng(seed)
        jagged = _random_events(rng, 200, [0, 1, 2, 3, 5])
        regular = {k: _random_events(rng, 200, [k]) for k in (1, 2, 3)}
        for count in (1, 2, 3):
            cases = [(leading_objects(ak.Array(jagged), count, ("q",)), jagged)]
            for k, events in regular.items():
                per_object = [
                    {c: np.array([e[j][c] for e in events]) for c in ("px", "py", "pz", "E", "q")}
                    for j in range(k)
                ]
                cases.append((leading_regular(per_object, count, ("q",)).columns(), events))
            for columns, events in cases:
                for name, values in _reference(events, count).items():
                    if name == "12_mass" and count < 2:
                        assert name not in columns
                        continue
                    np.testing.assert_allclose(columns[name], values, rtol=1e-12, atol=1e-9, err_msg=name)
                np.testing.assert_array_equal(columns["count"], [len(e) for e in events])


def test_branch_free_swap_equals_where_for_every_dtype_nan_included():
    from engine.kernels.lhc_kinematics import Swap

    for seed in range(3):
        rng = np.random.default_rng(seed)
        swap = rng.random(1000) < 0.5
        pick = Swap(swap)
        floats = rng.normal(0, 30, (2, 1000))
        floats[0, :50], floats[1, 50:60], floats[0, 60:70] = np.nan, np.inf, -0.0
        cases = [
            floats,
            floats.astype(np.float32),
            rng.integers(-1, 2, (2, 1000)).astype(np.int32),
            rng.random((2, 1000)) < 0.5,
        ]
        for first, second in cases:
            for a, b in ((first, second), (second, first)):
                got, want = pick(a, b), np.where(swap, b, a)
                assert got.dtype == want.dtype
                np.testing.assert_array_equal(got.view(f"u{got.itemsize}"), want.view(f"u{want.itemsize}"))
        # different dtypes fall back to np.where and its promotion
        mixed = pick(cases[2][0], floats[1])
        np.testing.assert_array_equal(mixed, np.where(swap, floats[1], cases[2][0]))


def test_in_place_masses_are_bit_for_bit_the_plain_numpy_expression():
    from engine.kernels.lhc_kinematics import pair_sum_mass, pair_sum_pt, transverse

    for seed in range(3):
        rng = np.random.default_rng(seed)
        a = {c: rng.normal(0, 40, 2000) for c in ("px", "py", "pz")}
        b = {c: rng.normal(0, 40, 2000) for c in ("px", "py", "pz")}
        for o in (a, b):  # masses near 0.1 GeV, and some below zero (E^2 < p^2)
            o["E"] = np.sqrt(o["px"] ** 2 + o["py"] ** 2 + o["pz"] ** 2 + rng.normal(0.01, 0.02, 2000))
        px, py, pz, energy = (a[c] + b[c] for c in ("px", "py", "pz", "E"))
        m2 = energy**2 - (px**2 + py**2 + pz**2)
        expected = np.sign(m2) * np.sqrt(np.abs(m2))
        np.testing.assert_array_equal(pair_sum_mass(a, b), expected)
        np.testing.assert_array_equal(signed_mass(energy, px, py, pz), expected)
        np.testing.assert_array_equal(pair_sum_pt(a, b), np.sqrt(px**2 + py**2))
        # sqrt(px^2 + py^2) against the overflow-safe hypot: the same to rounding
        np.testing.assert_allclose(transverse(a["px"], a["py"]), np.hypot(a["px"], a["py"]), rtol=4e-16)
        # float32 inputs are squared in float64, as the module promises
        single = {c: v.astype(np.float32) for c, v in a.items()}
        np.testing.assert_array_equal(
            transverse(single["px"], single["py"]),
            np.sqrt(single["px"].astype(np.float64) ** 2 + single["py"].astype(np.float64) ** 2),
        )
