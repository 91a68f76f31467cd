"""LO DIS FK tables: F2 at the data kinematics as a linear map of x f on a fixed x grid.

A prediction is obs[n] = sum_{x, f} FK[n, x, f] xf[x, f]: the PDF is known only on the grid, so
the table carries both the physics (quark charges per target) and the interpolation from the
grid to each data point's x (cubic Lagrange weights in ln x). A fit then evaluates its networks
on the grid alone, whatever the number of data points.

Parton-model LO with no evolution: the PDF at Q0 is used at every Q^2 (the table does not depend
on Q^2). Flavours are the light quarks and the gluon at Q0 below the charm threshold.
"""

from __future__ import annotations

import numpy as np

FLAVOURS = (-3, -2, -1, 1, 2, 3, 21)  # PDG ids: sbar, ubar, dbar, d, u, s, g
TARGETS = ("proton", "deuteron")
_CHARGE2 = {1: 1 / 9, 2: 4 / 9, 3: 1 / 9, 21: 0.0}


def x_grid(n: int = 50, x_min: float = 1e-3, x_switch: float = 0.1) -> np.ndarray:
    """n knots: half log-spaced on [x_min, x_switch), half linear on [x_switch, 1] (NNPDF-like).

    Log spacing resolves the small-x rise, linear spacing the fall to zero at x = 1.
    """
    if not 0 < x_min < x_switch < 1 or n < 8:
        raise ValueError(f"need 0 < x_min < x_switch < 1 and n >= 8, got {x_min}, {x_switch}, {n}")
    n_log = n // 2
    low = np.geomspace(x_min, x_switch, n_log, endpoint=False)
    return np.concatenate([low, np.linspace(x_switch, 1.0, n - n_log)])


def lagrange_weights(grid: np.ndarray, x: np.ndarray, order: int = 3) -> np.ndarray:
    """(len(x), len(grid)) weights w with f(x) ~= w @ f(grid): Lagrange of `order` in ln x.

    Each point uses the order + 1 knots around it (shifted inwards at the grid's ends).
    """
    grid = np.asarray(grid, float)
    x = np.asarray(x, float)
    if x.size and (x.min() < grid[0] or x.max() > grid[-1]):
        raise ValueError(f"x values {x.min():.4g}..{x.max():.4g} lie outside the grid "
                         f"[{grid[0]:.4g}, {grid[-1]:.4g}]")
    t, tx = np.log(grid), np.log(x)
    start = np.clip(np.searchsorted(grid, x) - (order + 1) // 2, 0, grid.size - order - 1)
    nodes = start[:, None] + np.arange(order + 1)
    tn = t[nodes]
    weights = np.ones_like(tn)
    for j in range(order + 1):
        for m in range(order + 1):
            if m != j:
                weights[:, j] *= (tx - tn[:, m]) / (tn[:, j] - tn[:, m])
    out = np.zeros((x.size, grid.size))
    np.put_along_axis(out, nodes, weights, axis=1)
    return out


def f2_charges(target: str) -> np.ndarray:
    """Coefficient of each x f (FLAVOURS order) in LO F2 per nucleon of `target`.

    Deuteron = (proton + neutron) / 2, the neutron from the proton by isospin (u <-> d).
    """
    proton = np.array([_CHARGE2[abs(f)] for f in FLAVOURS])
    if target == "proton":
        return proton
    if target == "deuteron":
        swapped = {1: 2, 2: 1, 3: 3, 21: 21}
        neutron = np.array([_CHARGE2[swapped[abs(f)]] for f in FLAVOURS])
        return 0.5 * (proton + neutron)
    raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")


def f2_fk_table(x: np.ndarray, targets: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """FK[n, j, f] for F2 of target[n] (index into TARGETS) at x[n] on the x grid."""
    charges = np.stack([f2_charges(t) for t in TARGETS])[np.asarray(targets, int)]
    return lagrange_weights(grid, x)[:, :, None] * charges[:, None, :]


def les_houches_toy(x: np.ndarray) -> np.ndarray:
    """x f(x, Q0^2 = 2 GeV^2) of the Les Houches toy PDF, (len(x), FLAVOURS) (DOMAIN.md 3)."""
    x = np.asarray(x, float)
    xuv = 5.1072 * x**0.8 * (1 - x) ** 3
    xdv = 3.06432 * x**0.8 * (1 - x) ** 4
    xg = 1.7 * x**-0.1 * (1 - x) ** 5
    xdbar = 0.1939875 * x**-0.1 * (1 - x) ** 6
    xubar = (1 - x) * xdbar
    xs = 0.2 * (xubar + xdbar)
    columns = {-3: xs, -2: xubar, -1: xdbar, 1: xdv + xdbar, 2: xuv + xubar, 3: xs, 21: xg}
    return np.stack([columns[f] for f in FLAVOURS], axis=-1)
