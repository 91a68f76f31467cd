"""LO F2 FK tables: the interpolation built into the table reproduces analytic F2 of a known PDF."""

from __future__ import annotations

import numpy as np
import pytest

from engine.kernels.pdf_fk import (
    FLAVOURS,
    TARGETS,
    f2_charges,
    f2_fk_table,
    lagrange_weights,
    les_houches_toy,
    x_grid,
)


def test_grid_is_increasing_log_then_linear_and_ends_at_one():
    grid = x_grid(50, 1e-3)
    assert grid.size == 50 and grid[0] == pytest.approx(1e-3) and grid[-1] == 1.0
    assert np.all(np.diff(grid) > 0)
    assert np.allclose(np.diff(np.log(grid[:25])), np.log(100) / 25)  # log part: 1e-3 .. 0.1
    assert np.allclose(np.diff(grid[25:]), 0.9 / 24)  # linear part: 0.1 .. 1


def test_lagrange_weights_are_exact_for_cubics_in_log_x_and_sum_to_one():
    grid = x_grid(30, 1e-4)
    x = np.geomspace(1e-4, 1.0, 200)
    weights = lagrange_weights(grid, x)
    assert np.allclose(weights.sum(1), 1.0)
    assert np.all(np.count_nonzero(weights, axis=1) <= 4)

    def cubic(v):
        t = np.log(v)
        return 1.0 - 2.0 * t + 0.3 * t**2 - 0.05 * t**3

    assert np.allclose(weights @ cubic(grid), cubic(x), rtol=1e-10)


@pytest.mark.parametrize("target", TARGETS)
def test_fk_times_grid_pdf_equals_analytic_f2_of_the_les_houches_toy(target):
    """Stated tolerance: 3e-4 relative for x < 0.8, 3e-3 up to x = 0.9 (50-point grid)."""
    grid = x_grid()
    x = np.concatenate([np.geomspace(1e-3, 0.1, 100), np.linspace(0.1, 0.9, 200)])
    fk = f2_fk_table(x, np.full(x.size, TARGETS.index(target)), grid)
    predicted = np.einsum("nxf,xf->n", fk, les_houches_toy(grid))
    exact = les_houches_toy(x) @ f2_charges(target)
    relative = np.abs(predicted / exact - 1)
    assert relative[x < 0.8].max() < 3e-4
    assert relative.max() < 3e-3


def test_charges_proton_and_isoscalar_deuteron():
    u, d, s, g = (FLAVOURS.index(p) for p in (2, 1, 3, 21))
    proton, deuteron = f2_charges("proton"), f2_charges("deuteron")
    assert proton[u] == pytest.approx(4 / 9) and proton[d] == pytest.approx(1 / 9) and proton[g] == 0
    assert deuteron[u] == deuteron[d] == pytest.approx(5 / 18) and deuteron[s] == pytest.approx(1 / 9)
    assert np.allclose(deuteron[FLAVOURS.index(-2)], deuteron[u])  # antiquarks like quarks


def test_points_outside_the_grid_and_unknown_targets_are_refused():
    grid = x_grid(50, 1e-2)
    with pytest.raises(ValueError, match="outside the grid"):
        lagrange_weights(grid, np.array([1e-3]))
    with pytest.raises(ValueError, match="unknown target 'neutron'"):
        f2_charges("neutron")
