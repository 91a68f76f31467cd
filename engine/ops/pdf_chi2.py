"""chi2 per dataset of a fit's central prediction: the table PDF fits are compared by.

NNPDF and the other fitting groups report, per dataset, chi2/n of the central prediction against
the data with the experimental (or t0) covariance of that dataset's points alone, beside the total
over every point with the full covariance (cross-dataset correlations included). This op gives
that table from a `pdf.predict` output, so a recipe's run prints it and stores it beside the fit.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field

from ..bounds import Params as _Params
from ..errors import OpError
from ..key_numbers import mark
from ..registry import register_op
from . import needs
from .core import as_delayed, require_variables

POINT = "point"


class Chi2Params(_Params):
    covariance: str = Field(
        "covariance", description="the covariance variable (point, point_b): e.g. the t0 one"
    )
    prediction: str = Field(
        "central", description="the prediction variable (point): the central member's by default"
    )


def chi2_per_point(prediction: np.ndarray, data: np.ndarray, covariance: np.ndarray) -> float:
    """chi2/n = r^T C^-1 r / n by a Cholesky solve (DOMAIN.md: no explicit inverse)."""
    from ..kernels.replicas import checked_cholesky

    z = np.linalg.solve(checked_cholesky(np.asarray(covariance, float)), np.asarray(prediction - data))
    return float(z @ z / z.size)


def _table(prediction, data, covariance, counts: tuple[int, ...]) -> np.ndarray:
    """[chi2/n over every point, then chi2/n of each dataset's contiguous block of points]."""
    edges = np.concatenate([[0], np.cumsum(counts)])
    blocks = [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    return np.array(
        [chi2_per_point(prediction, data, covariance)]
        + [chi2_per_point(prediction[s], data[s], covariance[s, s]) for s in blocks]
    )


@register_op("pdf.chi2_by_dataset", params=Chi2Params, memory=needs.gathered(2.0))
def chi2_by_dataset(params: Chi2Params, data: xr.Dataset) -> xr.Dataset:
    """chi2/n per dataset and in total of a pdf.predict output's `prediction` against its `data`.

    Datasets are the ingest's contiguous blocks of points (attrs `datasets`, `dataset_points`);
    each dataset's chi2 uses its own block of the covariance, the total the whole matrix.
    """
    require_variables(data, [params.prediction, "data", params.covariance])
    names, counts = data.attrs.get("datasets"), data.attrs.get("dataset_points")
    if not names or counts is None or int(np.sum(counts)) != data.sizes[POINT]:
        raise OpError(
            "expected the 'datasets' and 'dataset_points' attributes `ingest nnpdf` / `nnpdf-fk` "
            f"write, covering the {data.sizes[POINT]} points; found {names!r}, {counts!r}"
        )
    if data[params.prediction].dims != (POINT,):
        raise OpError(
            f"{params.prediction!r}: expected one value per point (dims ('point',)), found "
            f"{data[params.prediction].dims}"
        )
    counts = tuple(int(c) for c in counts)
    table = dask.delayed(_table, pure=True)(
        *(as_delayed(data[n].data) for n in (params.prediction, "data", params.covariance)), counts
    )
    values = da.from_delayed(table, (len(names) + 1,), float)
    result = xr.Dataset(
        {
            "chi2_per_point": ("dataset", values[1:]),
            "points": ("dataset", np.array(counts)),
            "chi2_all": ((), values[0]),
        },
        coords={"dataset": list(names)},
    )
    result["chi2_per_point"].attrs["long_name"] = "chi2 / n of the dataset's points"
    mark(result["chi2_all"], "value")  # the run summary's line (engine/key_numbers.py)
    mark(result["chi2_per_point"], "value")
    return result
