"""pdf.chi2_by_dataset: chi2/n per dataset and in total, against a direct solve."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from engine.errors import OpError
from engine.ops.pdf_chi2 import Chi2Params, chi2_by_dataset


def predicted(counts=(3, 5), seed=0) -> xr.Dataset:
    """A pdf.predict-like output: correlated covariance across the two datasets, central and data."""
    rng = np.random.default_rng(seed)
    n = sum(counts)
    a = rng.normal(size=(n, n))
    covariance = a @ a.T + n * np.eye(n)
    data = rng.normal(size=n)
    central = data + rng.normal(size=n)
    return xr.Dataset(
        {"central": ("point", central), "data": ("point", data),
         "covariance": (("point", "point_b"), covariance)},
        attrs={"datasets": ["SLAC_P", "HERA_NC"], "dataset_points": list(counts)},
    ).chunk({"point": 4})


def direct(d: xr.Dataset, s: slice) -> float:
    r = (d.central - d.data).values[s]
    return float(r @ np.linalg.solve(d.covariance.values[s, s], r) / r.size)


def test_each_dataset_uses_its_own_block_and_the_total_the_whole_matrix():
    d = predicted()
    table = chi2_by_dataset(Chi2Params(), d).compute()
    assert list(table.dataset.values) == ["SLAC_P", "HERA_NC"]
    assert list(table.points.values) == [3, 5]
    np.testing.assert_allclose(table.chi2_per_point.values, [direct(d, slice(0, 3)), direct(d, slice(3, 8))],
                               rtol=1e-12)
    np.testing.assert_allclose(float(table.chi2_all), direct(d, slice(None)), rtol=1e-12)
    # correlations across datasets count in the total: it is not the points-weighted mean
    weighted = float((table.chi2_per_point * table.points).sum() / 8)
    assert abs(float(table.chi2_all) - weighted) > 1e-3


def test_data_without_dataset_blocks_or_with_a_bad_prediction_are_refused():
    d = predicted()
    with pytest.raises(OpError, match="dataset_points"):
        chi2_by_dataset(Chi2Params(), d.assign_attrs(dataset_points=[3, 4]))
    with pytest.raises(OpError, match="one value per point"):
        chi2_by_dataset(Chi2Params(prediction="covariance"), d)
    with pytest.raises(OpError, match="is not in the data"):
        chi2_by_dataset(Chi2Params(covariance="t0_covariance"), d)
