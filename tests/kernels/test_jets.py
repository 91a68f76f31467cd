"""Synthetic jets and jet-frame preprocessing: physics of the stand-in, invariances of the features."""

from __future__ import annotations

import numpy as np
import pytest

from engine.kernels.jet_preprocess import constituent_features, jet_axis_frame, pt_eta_phi
from engine.kernels.jets_synth import jet_mass, simulate_jets


@pytest.fixture(scope="module")
def jets():
    return simulate_jets(2000, seed=5)


def test_jets_follow_the_reference_layout(jets):
    assert jets["E"].shape == (2000, 200) and jets["E"].dtype == np.float32
    pt = np.hypot(jets["PX"], jets["PY"])
    assert (np.diff(pt, axis=1) <= 1e-3).all()  # pT ordered
    padding = jets["E"] == 0
    assert all((jets[k][padding] == 0).all() for k in ("PX", "PY", "PZ"))
    assert (padding[:, -1]).all() and (~padding[:, 0]).all()  # zero padded, never empty
    assert set(np.unique(jets["label"])) == {0, 1}
    assert 0.45 < jets["label"].mean() < 0.55


def test_tops_have_the_top_mass_and_qcd_jets_are_light(jets):
    mass = jet_mass(jets["E"], jets["PX"], jets["PY"], jets["PZ"])
    top, qcd = mass[jets["label"] == 1], mass[jets["label"] == 0]
    assert 165 < np.median(top) < 190  # t -> b q q' with m_t ~ 175 (fragmentation adds a little)
    assert np.median(qcd) < 110  # one hard prong: a falling mass spectrum (median ~88 GeV)
    jet_pt = np.hypot(jets["PX"].sum(1), jets["PY"].sum(1))
    assert 500 < np.median(jet_pt) < 650


def test_blocks_are_reproducible_and_independent():
    a = simulate_jets(50, seed=1, block=3)
    assert np.array_equal(a["E"], simulate_jets(50, seed=1, block=3)["E"])
    assert not np.array_equal(a["E"], simulate_jets(50, seed=1, block=4)["E"])


def test_frame_is_centred_rotated_and_flipped(jets):
    w, u, v = jet_axis_frame(*pt_eta_phi(*(jets[k].astype(float) for k in ("E", "PX", "PY", "PZ"))))
    assert np.allclose(w.sum(1), 1)
    assert np.allclose((w * u).sum(1), 0, atol=1e-9) and np.allclose((w * v).sum(1), 0, atol=1e-9)
    assert np.allclose((w * u * v).sum(1), 0, atol=1e-9)  # principal axes
    assert ((w * u * u).sum(1) >= (w * v * v).sum(1) - 1e-12).all()  # the major one along u


def test_features_do_not_depend_on_the_jet_direction(jets):
    """Rotating a jet in phi and boosting it along z leave (pt fraction, deta, dphi) unchanged."""
    E, PX, PY, PZ = (jets[k][:200].astype(float) for k in ("E", "PX", "PY", "PZ"))
    base = constituent_features(E, PX, PY, PZ, 20)
    angle, rapidity = 2.5, 0.7
    c, s = np.cos(angle), np.sin(angle)
    ch, sh = np.cosh(rapidity), np.sinh(rapidity)
    moved = constituent_features(E * ch + PZ * sh, c * PX - s * PY, s * PX + c * PY, PZ * ch + E * sh, 20)
    assert base.shape == (200, 60)
    assert np.allclose(base, moved, atol=2e-4)


def test_padding_stays_zero_and_bad_shapes_are_refused(jets):
    features = constituent_features(jets["E"], jets["PX"], jets["PY"], jets["PZ"], 200)
    padded = np.repeat(jets["E"] == 0, 3, axis=1)
    assert (features[padded] == 0).all()
    with pytest.raises(ValueError, match=r"n_constituents must lie in \[1, 200\]"):
        constituent_features(jets["E"], jets["PX"], jets["PY"], jets["PZ"], 201)
    with pytest.raises(ValueError, match="equal 2-D"):
        constituent_features(jets["E"][0], jets["PX"][0], jets["PY"][0], jets["PZ"][0], 1)
