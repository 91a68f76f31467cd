"""`lhc.eft_bounds`: 95% intervals on Wilson coefficients from a stored ML4EFT ensemble.

The extended unbinned log-likelihood of a pseudo-data sample, log L(c) = -Lumi sigma(c) +
sum_i log r(x_i, c), is summed chunk by chunk over events (a tree reduction: memory one chunk) on
a 1-D or 2-D grid of c; beside it a binned Poisson likelihood built from the MC samples, and for
the analytic toy the same unbinned likelihood with the exact r. The training side is
engine.ops.lhc_eft.
"""

from __future__ import annotations

import math

import dask
import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field, field_validator

from ..bounds import MAX_BINS, MAX_SCAN_POINTS
from ..errors import OpError
from ..key_numbers import mark
from ..registry import register_op
from . import needs
from .core import as_delayed
from .lhc_eft import (
    EVENT,
    EftEnsemble,
    EftParams,
    SampleLayout,
    check_coefficients,
    require_features,
    stack_features,
    term_networks,
)


class BinnedParams(EftParams):
    feature: str = Field("x1", description="column histogrammed for the binned likelihood")
    edges: list[float] = Field(min_length=2, max_length=MAX_BINS + 1, description="bin edges, increasing")

    @field_validator("edges")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError(f"bin edges must increase strictly, found {value}")
        return value


class BoundsParams(EftParams):
    grid: dict[str, tuple[float, float, int]] = Field(
        description="coefficient -> [low, high, points] scanned (1 or 2 coefficients); others are 0")
    luminosity: float | None = Field(None, gt=0, description="default: the data's 'luminosity' attr")
    binned: BinnedParams | None = Field(None, description="binned likelihood beside (needs 'events')")
    exact_toy: bool = Field(False, description="also the exact-r likelihood (toy pseudo-data only)")
    level: float = Field(3.84, gt=0, description="-2 Delta log L of a 95% interval, 1 dof")

    @field_validator("grid")
    @classmethod
    def _one_or_two(cls, value):
        if not 1 <= len(value) <= 2:
            raise ValueError(f"scan 1 or 2 coefficients, found {len(value)}: {list(value)}")
        for name, (low, high, n) in value.items():
            if not high > low or n < 3:
                raise ValueError(f"grid of {name!r} needs low < high and >= 3 points, found "
                                 f"{[low, high, n]}")
        points = math.prod(n for _, _, n in value.values())
        if points > MAX_SCAN_POINTS:
            raise ValueError(f"expected at most {MAX_SCAN_POINTS} grid points in all, found {points}")
        return value


def _log_r_nn(block, weights, architecture, replicas, products):
    from ..kernels.eft import sum_log_ratio

    median = np.nanmedian(term_networks(block, weights, architecture, replicas), axis=1)
    return sum_log_ratio(products, median)[None]


def _log_r_exact(block, points, coefficients):
    from ..kernels.eft_toy import toy_ratio

    r = toy_ratio(block[:, 0], block[:, 1], points, coefficients)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r > 0, np.log(np.where(r > 0, r, 1.0)), -np.inf).sum(axis=-1)[None]


def _per_chunk_sum(fn, stacked: da.Array, g: int, *args) -> da.Array:
    """sum over event chunks of fn(chunk, *args) -> (1, G): a tree reduction, memory one chunk.

    meta given: dask does not call fn (a torch kernel) on empty arrays while the graph is built.
    """
    parts = da.map_blocks(fn, stacked, *args, drop_axis=1, new_axis=1,
                          chunks=((1,) * stacked.numblocks[0], (g,)), dtype=float,
                          meta=np.empty((0, 0), float))
    return parts.sum(axis=0)


def _histograms(values, sample_id, edges, n_samples):
    """(S, B) counts of one chunk: one histogram per MC sample."""
    out = np.zeros((n_samples, len(edges) - 1))
    for s in range(n_samples):
        out[s] = np.histogram(values[sample_id == s], edges)[0]
    return out


def _sample_histograms(events: xr.Dataset, feature: str, edges, n_samples: int) -> da.Array:
    values = events[feature].data
    ids = events["sample_id"].data.rechunk(values.chunks)
    parts = da.map_blocks(_histograms, values, ids, edges, n_samples, new_axis=1,
                          chunks=((n_samples,) * values.numblocks[0], (len(edges) - 1,)), dtype=float)
    return parts.reshape(values.numblocks[0], n_samples, len(edges) - 1).sum(axis=0)


def _expected(hist, totals, layout: SampleLayout, products, luminosity) -> np.ndarray:
    """mu_b(c) = Lumi [sigma_SM f_SM,b + sum_t P_t (sigma_(SM+t) f_t,b - sigma_SM f_SM,b) / s_t]."""
    sm = layout.sigma_sm * hist[layout.sm] / totals[layout.sm]
    terms = np.stack([(sig * hist[k] / totals[k] - sm) / s
                      for k, sig, s in zip(layout.terms, layout.sigma, layout.c_scale)])
    return luminosity * (sm + products @ terms)


def _scan(log_r_nn, log_r_exact, counts, hist, sigma, products, layout, luminosity, axes, level):
    from ..kernels.eft import binned_log_likelihood, delta_chi2, interval, unbinned_log_likelihood

    shape = tuple(len(a) for a in axes)
    q = {"nn": delta_chi2(unbinned_log_likelihood(log_r_nn, sigma, luminosity))}
    if log_r_exact is not None:
        q["exact"] = delta_chi2(unbinned_log_likelihood(log_r_exact, sigma, luminosity))
    if counts is not None:
        expected = _expected(hist, hist.sum(axis=1), layout, products, luminosity)
        q["binned"] = delta_chi2(binned_log_likelihood(counts, expected))
    out = {}
    for method, values in q.items():
        grid = values.reshape(shape)
        out[f"q_{method}"] = grid
        profiles = [grid.min(axis=tuple(j for j in range(len(axes)) if j != i)) for i in range(len(axes))]
        out[f"interval_{method}"] = np.array([interval(a, p, level) for a, p in zip(axes, profiles)])
    return out


@register_op("lhc.eft_bounds", params=BoundsParams, inputs=("model", "data"), optional_inputs=("events",),
             memory=needs.TorchNeed(needs.eft_bounds_need))
def eft_bounds(params: BoundsParams, model: xr.Dataset, data: xr.Dataset,
               events: xr.Dataset | None = None) -> xr.Dataset:
    """95% intervals on Wilson coefficients from the extended unbinned likelihood of pseudo-data.

    log L(c) = -Lumi sigma(c) + sum_i log r(x_i, c), r from the median over replicas of each
    term, scanned on a 1-D or 2-D grid: q_nn = -2 Delta log L (95%: 3.84 for 1 dof, contour
    5.99 for 2), intervals per coefficient (profiled over the other one in 2-D). Beside it:
    q_binned, a Poisson likelihood of a histogram with term cross sections per bin from the MC
    `events`, and q_exact, the same unbinned likelihood with the toy's exact r.
    """
    ensemble = EftEnsemble(model)
    check_coefficients(list(params.grid), ensemble.coefficients, "grid")
    luminosity = params.luminosity or data.attrs.get("luminosity")
    if luminosity is None:
        raise OpError("give params.luminosity: the data has no 'luminosity' attribute")
    scanned = list(params.grid)
    axes = [np.linspace(*params.grid[c]) for c in scanned]
    mesh = np.meshgrid(*axes, indexing="ij")
    points = np.zeros((mesh[0].size, len(ensemble.coefficients)))
    for name, values in zip(scanned, mesh):
        points[:, ensemble.coefficients.index(name)] = values.ravel()
    products = ensemble.products(points)
    sigma = ensemble.sigma_sm + products @ ensemble.term_sigma
    stacked = ensemble.stacked(data)
    g = len(points)
    log_r_nn = _per_chunk_sum(_log_r_nn, stacked, g, ensemble.weights, ensemble.architecture,
                              ensemble.replicas, products)
    log_r_exact = None
    if params.exact_toy:
        log_r_exact = _per_chunk_sum(_log_r_exact, _exact_features(data), g, points, ensemble.coefficients)
    counts = hist = layout = None
    if params.binned is not None:
        if events is None:
            raise OpError("the binned likelihood needs the MC samples: give the input 'events'")
        layout = SampleLayout(events, ensemble.terms)
        column = require_features(data, [params.binned.feature])[0]
        require_features(events, [params.binned.feature])
        counts = da.histogram(column.data, bins=params.binned.edges)[0]
        hist = _sample_histograms(events, params.binned.feature, params.binned.edges,
                                  len(events.attrs["samples"]))
    scan = dask.delayed(_scan, pure=True)(*map(as_delayed, (log_r_nn, log_r_exact, counts, hist)), sigma,
                                          products, layout, float(luminosity), axes, params.level)
    shape = tuple(len(a) for a in axes)
    methods = ["nn"] + ["exact"] * params.exact_toy + ["binned"] * (params.binned is not None)
    variables = {}
    for method in methods:
        variables[f"q_{method}"] = (scanned, da.from_delayed(scan[f"q_{method}"], shape, float))
        variables[f"interval_{method}"] = (("coefficient", "bound"), da.from_delayed(
            scan[f"interval_{method}"], (len(scanned), 2), float))
    result = xr.Dataset(variables, coords=dict(zip(scanned, axes)))
    for method in methods:  # (coefficient, bound): at most 4 numbers in the run summary
        mark(result[f"interval_{method}"], "value")
    result.attrs = {"coefficients": scanned, "bounds": ["low", "high"],
                    "luminosity": float(luminosity), "level": params.level,
                    "contour_level_2d": 5.99, "n_events": int(data.sizes[EVENT])}
    return result


def _exact_features(data: xr.Dataset) -> da.Array:
    from ..kernels.eft_toy import TOY_FEATURES, TOY_NAME

    if data.attrs.get("toy") != TOY_NAME:
        raise OpError(f"exact_toy needs pseudo-data of the toy (attribute toy={TOY_NAME!r}); found "
                      f"{data.attrs.get('toy')!r}")
    return stack_features(require_features(data, list(TOY_FEATURES)))
