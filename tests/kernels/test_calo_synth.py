"""The synthetic calorimeter against its own physics: gamma profile, Poisson quanta, lateral widths."""

from __future__ import annotations

import numpy as np
import pytest

from engine.kernels import calo_synth
from engine.kernels.calo_observables import shower_observables

# A grid wide enough to contain the halo (3 x the widest core, 1.9 cells, is < 1/3 of the 20-cell
# half-width), so layer energies follow the longitudinal profile alone.
WIDE = 40


def fixed_energy_showers(energy: float, n: int, seed: int, **options) -> dict:
    return calo_synth.simulate_showers(
        n, seed, incident=np.full(n, energy), n_side=WIDE, profile_jitter=0.0, **options
    )


@pytest.mark.parametrize("energy", [2.0, 50.0])
def test_layer_energies_follow_the_gamma_profile(energy):
    """Mean layer energy / E = the gamma profile integrated over the layer, within 4 standard
    errors (pooled over three seeds); the total's variance is the Poisson one, quantum x mean."""
    n, quantum = 2000, 0.01
    layers, totals = [], []
    for seed in range(3):
        showers = fixed_energy_showers(energy, n, seed, quantum=quantum)
        layers.append(showers["energy"].sum(-1) / energy)
        totals.append(showers["energy"].sum((1, 2)))
    layers, totals = np.concatenate(layers), np.concatenate(totals)
    expected = calo_synth.expected_layer_fractions(np.array([energy]), 3)[0]
    error = layers.std(0) / np.sqrt(len(layers))
    print(energy, layers.mean(0), expected, error)
    assert np.all(np.abs(layers.mean(0) - expected) < 4 * error + 1e-3 * expected)
    # Var(total) = quantum x E[total] for Poisson quanta: the variance estimate from 6000 showers
    # has a relative error sqrt(2/6000) = 1.8%, so +-8% is > 4 sigma either way.
    ratio = totals.var() / (quantum * totals.mean())
    assert 0.92 < ratio < 1.08, ratio


def test_higher_energy_showers_peak_deeper_and_are_narrower_at_each_depth():
    cell_x = np.tile(calo_synth.cell_centres(WIDE), WIDE)
    width = {}
    for energy in (2.0, 50.0):
        showers = fixed_energy_showers(energy, 1000, 7, quantum=0.001)
        obs = shower_observables(showers["energy"], showers["incident_energy"], cell_x)
        width[energy] = obs[:, [5, 8, 11]].mean(0)  # layer{k}_width_x
        # the widths measured = sqrt of the energy-weighted core + halo variance (+1/12 for the
        # cell size), up to the impact point's spread within one shower (none: it is fixed)
        sigma = calo_synth.lateral_widths(np.array([energy]), 3)[0]
        h = calo_synth.HALO
        expected = np.sqrt((1 - h) * sigma**2 + h * (calo_synth.HALO_SCALE * sigma) ** 2 + 1 / 12)
        print(energy, width[energy], expected)
        np.testing.assert_allclose(width[energy], expected, rtol=0.05)
    assert np.all(width[50.0] < width[2.0])
    fractions = calo_synth.expected_layer_fractions(np.array([2.0, 50.0]), 3)
    assert fractions[0, 0] > fractions[1, 0] and fractions[0, 2] < fractions[1, 2]


def test_blocks_are_reproducible_and_independent():
    a = calo_synth.simulate_showers(50, seed=3, block=1)
    b = calo_synth.simulate_showers(50, seed=3, block=1)
    c = calo_synth.simulate_showers(50, seed=3, block=2)
    np.testing.assert_array_equal(a["energy"], b["energy"])
    assert not np.array_equal(a["incident_energy"], c["incident_energy"])
    assert a["energy"].shape == (50, 3, 36) and a["energy"].dtype == np.float32
    counts = a["energy"] / 0.01
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)  # whole quanta
    e = a["incident_energy"]
    assert e.min() >= 1.0 and e.max() <= 100.0


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="quantum > 0"):
        calo_synth.simulate_showers(10, 0, quantum=0.0)
    with pytest.raises(ValueError, match="incident energies must be 3 positive values, found 2"):
        calo_synth.simulate_showers(3, 0, incident=np.ones(2))
