"""Key numbers of an output: the few statistics a run summary prints beside its path.

An op marks a variable of its output with `mark(var, ...)`, which sets two variable attributes
stored with the output (the one mechanism; these are the allowed values):

    attrs["key_numbers"]        one statistic or a list of them:
        "median"        NaN-aware median and 16-84% band, with the count of NaN values
        "count_false"   how many values are False (e.g. spectra without a zero-loss peak)
        "fraction_true" the fraction of True values (e.g. fits that converged)
        "value"         the values themselves (a scalar or a few numbers: interval bounds)
    attrs["key_numbers_truth"]  optional: a variable of the same output holding the known truth
                                (synthetic inputs carry truth maps); the summary adds the median
                                difference and ratio to it
    attrs["key_numbers_label"]  optional: what a False means, for count_false
    attrs["key_numbers_lower_limit_at"]  optional: a scalar variable of the same output; values equal
                                to it are lower limits, not measurements (a rejection 1/eps_B where
                                no background passed is bounded by the number of background jets):
                                the summary counts them and says the median is a bound

The runner reads them from every published output (computed or up to date) with `summarize`;
variables over `MAX_ELEMENTS` are not read. `describe` makes the one line the CLI prints.
"""

from __future__ import annotations

import math
from typing import Any

import dask
import numpy as np
import xarray as xr

ATTR = "key_numbers"
TRUTH_ATTR = "key_numbers_truth"
LABEL_ATTR = "key_numbers_label"
LIMIT_ATTR = "key_numbers_lower_limit_at"
STATISTICS = ("median", "count_false", "fraction_true", "value")
MAX_ELEMENTS = 10**7  # larger variables are skipped: reading them would cost more than the line
MAX_VALUES = 8  # "value" prints at most this many numbers


def mark(var: xr.DataArray, *statistics: str, truth: str | None = None,
         label: str | None = None, lower_limit_at: str | None = None) -> xr.DataArray:
    """Ask the run summary for `statistics` of `var` (in place; returns `var`)."""
    unknown = [s for s in statistics if s not in STATISTICS]
    if unknown or not statistics:
        raise ValueError(f"key numbers {unknown or statistics} are not among {STATISTICS}")
    var.attrs[ATTR] = statistics[0] if len(statistics) == 1 else list(statistics)
    if truth is not None:
        var.attrs[TRUTH_ATTR] = truth
    if label is not None:
        var.attrs[LABEL_ATTR] = label
    if lower_limit_at is not None:
        var.attrs[LIMIT_ATTR] = lower_limit_at
    return var


def _requested(var: xr.DataArray) -> list[str]:
    value = var.attrs.get(ATTR)
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _number(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def summarize(dataset: xr.Dataset, max_elements: int = MAX_ELEMENTS) -> list[dict[str, Any]]:
    """The key numbers of every marked variable of `dataset` (lazy: read chunk by chunk, in one
    dask call per variable). Each is a dict: variable, statistic, the numbers, `size`."""
    found = []
    for name, var in dataset.data_vars.items():
        requested = _requested(var)
        if not requested:
            continue
        base = {"variable": str(name), "units": var.attrs.get("units"), "size": int(var.size)}
        if var.size > max_elements:
            found.append({**base, "statistic": "skipped",
                          "note": f"{var.size} elements, over the {max_elements} summarised"})
            continue
        truth_name, limit_name = var.attrs.get(TRUTH_ATTR), var.attrs.get(LIMIT_ATTR)
        truth = dataset[truth_name] if truth_name in dataset.data_vars else None
        limit = dataset[limit_name] if limit_name in dataset.data_vars else None
        for statistic in requested:
            found.append({**base, "statistic": statistic,
                          **_statistic(var, statistic, truth, var.attrs.get(LABEL_ATTR), limit)})
    return found


def _statistic(var: xr.DataArray, statistic: str, truth: xr.DataArray | None,
               label: str | None, limit: xr.DataArray | None = None) -> dict[str, Any]:
    data = var.data
    if statistic == "count_false":
        false, = dask.compute((~data.astype(bool)).sum())
        return {"count": int(false), "label": label}
    if statistic == "fraction_true":
        true, = dask.compute(data.astype(bool).sum())
        return {"count": int(true), "fraction": int(true) / var.size if var.size else None}
    if statistic == "value":
        if var.size > MAX_VALUES:
            return {"note": f"{var.size} values"}
        values, = dask.compute(data)
        return {"values": [_number(v) for v in np.asarray(values, float).ravel()]}
    if statistic != "median":
        return {"note": f"unknown statistic {statistic!r} (allowed: {', '.join(STATISTICS)})"}
    if truth is not None and truth.shape == var.shape:
        values, exact = dask.compute(data, truth.data)
    else:
        (values,), exact = dask.compute(data), None
    values = np.asarray(values, float).ravel()
    finite = values[np.isfinite(values)]
    result: dict[str, Any] = {"nan": int(values.size - finite.size), "median": None,
                              "p16": None, "p84": None}
    if finite.size:
        result["median"], result["p16"], result["p84"] = (
            float(q) for q in np.quantile(finite, [0.5, 0.16, 0.84]))
    if limit is not None and limit.size == 1:
        bound, = dask.compute(limit.data)
        bound = float(np.asarray(bound))
        result["lower_limit"] = {"at": bound, "count": int((finite == bound).sum())}
    if exact is not None:
        exact = np.asarray(exact, float).ravel()
        both = np.isfinite(values) & np.isfinite(exact)
        nonzero = both & (exact != 0)
        result["truth"] = {
            "variable": truth.name,
            "median_difference": float(np.median(values[both] - exact[both])) if both.any() else None,
            "median_ratio": float(np.median(values[nonzero] / exact[nonzero])) if nonzero.any() else None}
    return result


def _g(value: float | None) -> str:
    return "NaN" if value is None else f"{value:.3g}"


def describe(item: dict[str, Any]) -> str:
    """One item of `summarize` as text, e.g. 't_over_lambda median 0.52 (16-84%: 0.41-0.63)'."""
    name, statistic = item["variable"], item["statistic"]
    if "note" in item:
        return f"{name}: {item['note']}"
    if statistic == "count_false":
        return f"{item['count']} of {item['size']} {item.get('label') or name + ' False'}"
    if statistic == "fraction_true":
        return (f"{name} {100 * (item['fraction'] or 0):.1f}% "
                f"({item['count']} of {item['size']})")
    if statistic == "value":
        values = ", ".join(_g(v) for v in item["values"])
        return f"{name} = {values if len(item['values']) == 1 else '[' + values + ']'}" + (
            f" {item['units']}" if item.get("units") and item["units"] != "1" else "")
    units = f" {item['units']}" if item.get("units") and item["units"] != "1" else ""
    text = (f"{name} median {_g(item['median'])}{units} "
            f"(16-84%: {_g(item['p16'])}-{_g(item['p84'])})")
    if item["nan"]:
        text += f", {item['nan']} of {item['size']} NaN"
    limit = item.get("lower_limit")
    if limit and limit["count"]:
        bound = "the median is a lower limit" if item["median"] == limit["at"] else "lower limits"
        text += f", {limit['count']} of {item['size']} at {_g(limit['at'])} ({bound}: nothing passed)"
    truth = item.get("truth")
    if truth:
        difference = truth["median_difference"]
        text += (f", vs truth {truth['variable']}: median difference "
                 f"{'NaN' if difference is None else format(difference, '+.3g')}"
                 f", median ratio {_g(truth['median_ratio'])}")
    return text
