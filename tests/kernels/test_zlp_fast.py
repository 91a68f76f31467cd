"""subtract_fast's shared-model bands and in-place output against the plain matching rule.

A synthetic quantile grid (no training): what is checked is the arithmetic of the fast path
(I - ZLP as weight x (I - model) with the regions set, the dE_I-moved medians reusing the
interpolated model, the union window, the `out` buffer), not the model.
"""

import numpy as np
import pytest

from engine.kernels import eels_synth as g
from engine.kernels import zlp


def _case(seed: int, pixels: int = 40):
    energy = g.energy_axis(2048)
    rng = np.random.default_rng(seed)
    signal = rng.uniform(0.5, 2.0, (pixels, energy.size)).astype(np.float32)
    signal *= (1e4 * np.exp(-np.abs(energy) / 0.8) + 5.0).astype(np.float32)
    ln_n = np.log(signal.sum(1, dtype=np.float64))
    nodes = zlp.ln_n_nodes(ln_n.min() - 1e-3, ln_n.max() + 1e-3, 32)
    base = np.log(1e4 * np.exp(-np.abs(energy) / 0.7) + 1.0)
    offsets = np.sort(rng.normal(0, 0.2, (3, 1, 1)), axis=0)[::-1]  # inelastic rank 0: highest model
    slope = rng.normal(0, 0.3, (1, nodes.size, 1)) * (nodes - nodes.mean())[None, :, None]
    grid = (base + offsets + slope).astype(np.float32)
    cluster = rng.integers(0, 3, pixels)
    fwhm = np.array([0.35, 0.4, 0.5])[cluster]
    de_i = np.array([1.0, 1.2, 1.6])[cluster]
    de_ii = np.array([5.0, 6.0, 7.5])[cluster]
    return energy, signal, nodes, grid, fwhm, de_i, de_ii


def _reference(signal, energy, nodes, grid, fwhm, de_i, de_ii, rows):
    """I - match_zlp(I, interpolated model) on the whole axis, grid rows `rows`."""
    ln_n = np.log(signal.sum(1, dtype=np.float64))
    i = np.clip(np.searchsorted(nodes, ln_n, side="right") - 1, 0, nodes.size - 2)
    t = ((ln_n - nodes[i]) / (nodes[i + 1] - nodes[i])).astype(np.float32)[:, None]
    low = grid[rows][:, i]
    model = np.exp(low + t * (grid[rows][:, i + 1] - low))
    return signal - zlp.match_zlp(signal, model, energy, fwhm, de_i, de_ii)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_bands_and_moved_medians_follow_the_matching_rule(seed):
    energy, signal, nodes, grid, fwhm, de_i, de_ii = _case(seed)
    moved = [de_i - 0.2, de_i + 0.2]
    out = np.full((5, *signal.shape), np.nan, np.float32)
    bands = zlp.subtract_fast(signal, energy, nodes, grid, fwhm, de_i, de_ii, moved_de_i=moved, out=out)
    assert bands is out and not np.isnan(out).any()
    expected = [_reference(signal, energy, nodes, grid, fwhm, de_i, de_ii, [0, 1, 2])]
    expected += [_reference(signal, energy, nodes, grid, fwhm, d, de_ii, [1]) for d in moved]
    expected = np.concatenate(expected)
    # equal to float32 rounding of the counts (the blend is computed as w (I - model))
    np.testing.assert_allclose(bands, expected, rtol=0, atol=4 * np.spacing(signal.max()))
    # exact where the rule is exact: zero below dE_0, the signal from dE_II on
    for k, d in enumerate([de_i, de_i, de_i, *moved]):
        below = energy < ((fwhm + d) / 2)[:, None]
        beyond = energy >= de_ii[:, None]
        assert np.all(bands[k][below] == 0)
        np.testing.assert_array_equal(bands[k][beyond], signal[beyond])
    # a moved set alone gives the same median band as it does appended
    alone = zlp.subtract_fast(signal, energy, nodes, grid[[1]], fwhm, moved[1], de_ii)
    np.testing.assert_array_equal(alone[0], bands[4])
    # another grid row for the moved median
    first = zlp.subtract_fast(signal, energy, nodes, grid, fwhm, de_i, de_ii, moved_de_i=[de_i], moved_row=0)
    np.testing.assert_array_equal(first[3], first[0])


def test_fast_rejects_bad_out_and_row():
    energy, signal, nodes, grid, fwhm, de_i, de_ii = _case(0, pixels=4)
    with pytest.raises(ValueError, match=r"out must be float32 \(4, 4, 2048\), got float32 \(3, 4, 2048\)"):
        zlp.subtract_fast(
            signal,
            energy,
            nodes,
            grid,
            fwhm,
            de_i,
            de_ii,
            moved_de_i=[de_i],
            out=np.empty((3, 4, 2048), np.float32),
        )
    with pytest.raises(ValueError, match="out must be float32"):
        zlp.subtract_fast(
            signal, energy, nodes, grid, fwhm, de_i, de_ii, out=np.empty((3, 4, 2048), np.float64)
        )
    with pytest.raises(ValueError, match="moved_row must index the grid's 3 rows, got 3"):
        zlp.subtract_fast(signal, energy, nodes, grid, fwhm, de_i, de_ii, moved_de_i=[de_i], moved_row=3)


def test_fast_is_exactly_zero_below_dE_0_even_where_the_model_overflows():
    # a moved dE_I widens the window below this set's dE_0; a model there that overflows exp
    # must still give I - ZLP = 0 (ZLP = signal), not 0 x (I - inf) = NaN
    energy, signal, nodes, grid, _, _, _ = _case(3, pixels=6)
    grid[:, :, (energy >= 0.6) & (energy < 0.8)] = 100.0  # exp(100) overflows float32
    with np.errstate(over="ignore", invalid="ignore"):
        bands = zlp.subtract_fast(signal, energy, nodes, grid, 0.4, 1.2, 6.0, moved_de_i=[0.8])
    assert np.all(bands[:3][:, :, energy < 0.8] == 0)
    assert np.all(np.isneginf(bands[3][:, (energy >= 0.6) & (energy < 0.8)]))  # blend: -inf, as match_zlp
