"""Four-vector kinematics: conversions both ways and pair masses against known values."""

from __future__ import annotations

import awkward as ak
import numpy as np

from engine.kernels.lhc_kinematics import leading_objects, signed_mass, to_cartesian, to_polar


def test_polar_and_cartesian_round_trip():
    rng = np.random.default_rng(0)
    pt, eta, phi, mass = rng.uniform(1, 100, 50), rng.uniform(-3, 3, 50), rng.uniform(-np.pi, np.pi, 50), \
        rng.uniform(0, 10, 50)
    back = to_polar(**to_cartesian(pt, eta, phi, mass))
    for name, values in (("pt", pt), ("eta", eta), ("phi", phi), ("mass", mass)):
        np.testing.assert_allclose(back[name], values, rtol=1e-9, atol=1e-7)


def test_back_to_back_muons_give_twice_the_energy():
    # two 45.6 GeV massless muons back to back: the pair mass is 91.2 GeV, its pt zero
    muons = ak.Array([[{"px": 45.6, "py": 0.0, "pz": 0.0, "E": 45.6, "q": 1},
                       {"px": -45.6, "py": 0.0, "pz": 0.0, "E": 45.6, "q": -1}]])
    columns = leading_objects(muons, 2, ("q",))
    np.testing.assert_allclose(columns["12_mass"], [91.2])
    np.testing.assert_allclose(columns["12_pt"], [0.0], atol=1e-12)


def test_leading_objects_are_ordered_by_pt_and_padded_with_nan():
    objects = ak.Array([[{"px": 1.0, "py": 0.0, "pz": 0.0, "E": 2.0},
                         {"px": 5.0, "py": 0.0, "pz": 0.0, "E": 6.0}],
                        [], [{"px": 0.0, "py": 3.0, "pz": 4.0, "E": 5.0}]])
    columns = leading_objects(objects, 2)
    np.testing.assert_array_equal(columns["count"], [2, 0, 1])
    np.testing.assert_allclose(columns["1_pt"], [5.0, np.nan, 3.0])
    np.testing.assert_allclose(columns["2_pt"], [1.0, np.nan, np.nan])
    np.testing.assert_allclose(columns["1_mass"], [np.sqrt(11), np.nan, 0.0], atol=1e-12)
    np.testing.assert_allclose(columns["1_eta"][2], np.arcsinh(4 / 3))
    assert np.isnan(columns["12_mass"][1]) and np.isnan(columns["12_mass"][2])


def test_mass_of_unphysical_vectors_is_negative():
    assert signed_mass(np.array(1.0), np.array(2.0), np.array(0.0), np.array(0.0)) == -np.sqrt(3)
