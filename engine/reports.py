"""PNG pictures of published outputs, written to the lake's reports/ zone.

A picture is made from the published store (not from the graph) so what a person sees is what
the lake holds. Maps larger than the figure are coarsened with a block mean, lazily, so a
10^6-pixel map never needs more than the figure's resolution in memory.
"""

from __future__ import annotations

import io

import numpy as np

from .errors import OpError, did_you_mean
from .recipe import Plot
from .storage import Lake

MAX_PIXELS_PER_SIDE = 1024


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend. Imported when a picture is drawn, not
    with this module: matplotlib takes ~0.5 s to import and a run with nothing to compute draws
    nothing (the runner only checks that the PNGs exist)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def report_path(lake: Lake, zone: str, name: str, plot: Plot) -> str:
    return lake.entry_path("reports", f"{zone}/{name}/{plot.variable}.png")


def plot_variables(plot: Plot) -> list[tuple[tuple, str]]:
    """(key in the plot, variable) of every variable the plot reads: a band's
    `<variable>_quantile` (as replicas.summary writes it), else `variable`, then overlays and points."""
    base = f"{plot.variable}_quantile" if plot.kind == "band" else plot.variable
    return [(("variable",), base), *((("overlay", i), v) for i, v in enumerate(plot.overlay)),
            *((("points", i), v) for i, v in enumerate(plot.points))]


def missing_plot_variables(dataset, plot: Plot) -> list[tuple[tuple, str]]:
    """(key in the plot, message) of each variable `plot` reads that `dataset` lacks. Compiling a
    recipe checks its plots with this against each output's lazy dataset, so a misnamed variable
    fails `validate` rather than every run after the output is published."""
    available = ", ".join(map(str, dataset.data_vars)) or "none"
    return [(key, f"variable {name!r} is not in the output{did_you_mean(name, dataset.variables)}; "
                  f"its variables are {available}")
            for key, name in plot_variables(plot) if name not in dataset.variables]


def _draw_map(axes, figure, data, plot: Plot) -> None:
    if data.ndim != 2:
        raise OpError(f"a map needs a 2-D variable; {plot.variable!r} has dims {data.dims}")
    factors = {d: max(1, -(-n // MAX_PIXELS_PER_SIDE)) for d, n in data.sizes.items()}
    if any(f > 1 for f in factors.values()):
        data = data.coarsen(factors, boundary="trim").mean()
    image = data.load()
    mesh = axes.imshow(image.values, origin="upper", cmap=plot.cmap, interpolation="nearest")
    axes.set_xlabel(data.dims[1])
    axes.set_ylabel(data.dims[0])
    label = plot.variable + (f" [{data.attrs['units']}]" if "units" in data.attrs else "")
    figure.colorbar(mesh, ax=axes, label=label)


def _x_of(data):
    """The coordinate to plot a 1-D variable against (its dim's first 1-D coordinate)."""
    (dim,) = data.dims
    for coord in data.coords.values():
        if coord.dims == (dim,):
            return coord.values, str(coord.name)
    return range(data.sizes[dim]), dim


def _draw_band(axes, dataset, plot: Plot) -> None:
    bands = dataset[f"{plot.variable}_quantile"].load()
    if bands.ndim != 2 or "quantile" not in bands.dims:
        raise OpError(f"a band plot needs {plot.variable}_quantile with dims (quantile, x); "
                      f"found {bands.dims}")
    low, mid, high = (bands.isel(quantile=i) for i in (0, bands.sizes["quantile"] // 2, -1))
    x, label = _x_of(mid)
    q = bands["quantile"].values
    axes.fill_between(x, low.values, high.values, alpha=0.3,
                      label=f"{q[0]:.0%}-{q[-1]:.0%} of replicas")
    axes.plot(x, mid.values, label=f"{plot.variable} ({q[len(q) // 2]:.0%})")
    for name in plot.overlay:
        axes.plot(x, dataset[name].values, "k--", label=name)
    for name in plot.points:
        axes.plot(x, dataset[name].values, ".", label=name)
    axes.set_xlabel(label)
    axes.legend()


def _draw_scan(axes, dataset, plot: Plot) -> None:
    """-2 Delta log L curves with the 1-dof 95% line, or 2-D contours at the 2-dof 95% level."""
    names = [plot.variable, *plot.overlay]
    first = dataset[plot.variable]
    if first.ndim == 1:
        x, label = _x_of(first)
        for name in names:
            axes.plot(x, dataset[name].values, label=name)
        level = float(dataset.attrs.get("level", 3.84))
        axes.axhline(level, color="grey", linestyle=":", label=f"95% ({level:g})")
        axes.set_ylim(0, 4 * level)
        axes.set_xlabel(label)
        axes.set_ylabel("-2 Delta log L")
        axes.legend()
    elif first.ndim == 2:
        from matplotlib.lines import Line2D

        level = float(dataset.attrs.get("contour_level_2d", 5.99))
        ydim, xdim = first.dims
        handles = []
        for k, name in enumerate(names):
            axes.contour(dataset[xdim].values, dataset[ydim].values, dataset[name].values,
                         levels=[level], colors=[f"C{k}"])
            handles.append(Line2D([], [], color=f"C{k}", label=f"{name} 95% ({level:g})"))
        axes.legend(handles=handles)
        axes.set_xlabel(xdim)
        axes.set_ylabel(ydim)
    else:
        raise OpError(f"a scan plot needs a 1-D or 2-D variable; {plot.variable!r} has dims {first.dims}")


def _draw_roc(axes, dataset, plot: Plot) -> None:
    """Background rejection 1/eps_B against signal efficiency (log scale): median and 68% band
    over replicas of `variable`, eps_B with dims (replica, signal_efficiency)."""
    eps_b = dataset[plot.variable].load()
    if eps_b.dims != ("replica", "signal_efficiency"):
        raise OpError(f"a roc plot needs {plot.variable!r} with dims (replica, signal_efficiency); "
                      f"found {eps_b.dims}")
    n_background = int(dataset["n_background_test"]) if "n_background_test" in dataset else 1
    floor = 1.0 / max(n_background, 1)  # no background passing: rejection >= n_background
    rejection = 1.0 / eps_b.clip(min=floor)
    low, mid, high = (rejection.quantile(q, dim="replica") for q in (0.16, 0.5, 0.84))
    x = eps_b["signal_efficiency"].values
    axes.fill_between(x, low.values, high.values, alpha=0.3, label="16-84% of replicas")
    axes.plot(x, mid.values, label="median")
    if "quoted_signal_efficiency" in dataset.attrs:
        axes.axvline(float(dataset.attrs["quoted_signal_efficiency"]), color="grey", linestyle=":")
    axes.set_yscale("log")
    axes.set_xlabel("signal efficiency eps_S")
    axes.set_ylabel("background rejection 1/eps_B")
    axes.legend()


def _draw_hist(axes, dataset, plot: Plot) -> None:
    """Counts as steps over the bin edges (`<dim>_edges`), with sqrt(variances) error bars."""
    counts = dataset[plot.variable].load()
    if counts.ndim != 1 or f"{counts.dims[0]}_edges" not in dataset.coords:
        raise OpError(f"a hist plot needs a 1-D histogram with '<dim>_edges' (an lhc.histogram "
                      f"output); {plot.variable!r} has dims {counts.dims}")
    (dim,) = counts.dims
    axes.stairs(counts.values, dataset[f"{dim}_edges"].values, label=plot.variable)
    if "variances" in dataset:
        axes.errorbar(dataset[dim].values, counts.values, yerr=np.sqrt(dataset["variances"].values),
                      fmt="none", ecolor="black", elinewidth=0.8)
    axes.set_xlabel(dataset[dim].attrs.get("long_name", dim))
    axes.set_ylabel(counts.attrs.get("long_name", plot.variable))


def draw_plot(lake: Lake, zone: str, name: str, plot: Plot) -> str:
    """Draw one plot of a published entry and write it atomically; return its path."""
    dataset = lake.open(zone, name)
    missing = missing_plot_variables(dataset, plot)
    if missing:  # the output in the lake is not what compiling the recipe checked
        raise OpError(f"plot of {zone}/{name}: {missing[0][1]}")
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 5), dpi=120)
    if plot.kind == "map":
        _draw_map(axes, figure, dataset[plot.variable], plot)
    elif plot.kind == "band":
        _draw_band(axes, dataset, plot)
    elif plot.kind == "roc":
        _draw_roc(axes, dataset, plot)
    elif plot.kind == "scan":
        _draw_scan(axes, dataset, plot)
    elif plot.kind == "hist":
        _draw_hist(axes, dataset, plot)
    else:
        data = dataset[plot.variable]
        if data.ndim != 1:
            raise OpError(f"a line plot needs a 1-D variable; {plot.variable!r} has dims {data.dims}")
        data.load().plot.line(ax=axes)
    axes.set_title(plot.title or f"{name}: {plot.variable}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    path = report_path(lake, zone, name, plot)
    lake.write_bytes_atomic(path, buffer.getvalue())
    return path
