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
    `<variable>_quantile` (as replicas.summary writes it), else `variable`, then overlays, points
    and the coordinates named by `x` and `colour_by`."""
    base = f"{plot.variable}_quantile" if plot.kind == "band" else plot.variable
    coords = [((key,), name) for key in ("x", "colour_by") if (name := getattr(plot, key))]
    return [(("variable",), base), *((("overlay", i), v) for i, v in enumerate(plot.overlay)),
            *((("points", i), v) for i, v in enumerate(plot.points)), *coords]


def missing_plot_variables(dataset, plot: Plot) -> list[tuple[tuple, str]]:
    """(key in the plot, message) of each variable `plot` reads that `dataset` lacks. Compiling a
    recipe checks its plots with this against each output's lazy dataset, so a misnamed variable
    fails `validate` rather than every run after the output is published."""
    available = ", ".join(map(str, dataset.data_vars)) or "none"
    return [(key, f"variable {name!r} is not in the output{did_you_mean(name, dataset.variables)}; "
                  f"its variables are {available}")
            for key, name in plot_variables(plot) if name not in dataset.variables]


def axis_label(var, name: str | None = None) -> str:
    """'long_name [units]' from a variable's attributes (its name without a long_name; no units
    for a dimensionless '1')."""
    text = str(var.attrs.get("long_name") or name or var.name)
    units = var.attrs.get("units")
    return f"{text} [{units}]" if units and str(units) != "1" else text


# Overlays (truths, references) as black, red, green... lines of different dashes: two overlays
# never look alike, and none looks like the band's solid middle line.
OVERLAY_STYLES = (("black", "--"), ("tab:red", ":"), ("tab:green", "-."), ("tab:purple", (0, (5, 1, 1, 1))))
NAN_HATCH = "////"
MAX_CATEGORIES = 20  # an integer map with more distinct values is a quantity (counts), not labels


def _categorical(data) -> bool:
    """A map of labels (clusters): integer or boolean values, or CF flag_values."""
    return "flag_values" in data.attrs or data.dtype.kind in "iub"


def _shrink(data):
    """At most MAX_PIXELS_PER_SIDE per side: block means, or every n-th pixel for labels (a mean
    of labels is no label)."""
    factors = {d: max(1, -(-n // MAX_PIXELS_PER_SIDE)) for d, n in data.sizes.items()}
    if all(f == 1 for f in factors.values()):
        return data
    if _categorical(data):
        return data.isel({d: slice(None, None, f) for d, f in factors.items()})
    return data.coarsen(factors, boundary="trim").mean()


def _pixel_axes(data):
    """(x centres, y centres, x label, y label) of a map: a coordinate along each dim that has
    units (a file's spatial calibration, e.g. `x_nm` in nm from a DM file), else the dim's own
    numeric coordinate, else pixel indices."""
    centres, labels = [], []
    for dim in data.dims[::-1]:
        along = [c for c in data.coords.values()
                 if c.dims == (dim,) and c.size > 1 and np.asarray(c.values).dtype.kind in "iuf"]
        ranked = [c for c in along if c.attrs.get("units")] + [c for c in along if c.name == dim]
        coord = ranked[0] if ranked else None
        if coord is None:
            centres.append(np.arange(data.sizes[dim], dtype=float))
            labels.append(f"{dim} (pixel)")
        else:
            centres.append(np.asarray(coord.values, dtype=float))
            labels.append(axis_label(coord, str(dim)) if coord.attrs.get("units") else f"{dim} (pixel)")
    return centres[0], centres[1], labels[0], labels[1]


def _edges(centres: np.ndarray) -> np.ndarray:
    step = (centres[-1] - centres[0]) / (centres.size - 1) if centres.size > 1 else 1.0
    return np.linspace(centres[0] - step / 2, centres[-1] + step / 2, centres.size + 1)


def _runs(mask: np.ndarray, x_edges: np.ndarray, y_edges: np.ndarray) -> list[np.ndarray]:
    """Rectangles covering the True pixels, one per run of them along a row: exact pixel edges,
    and a few thousand shapes even for a 1024 x 1024 map half of NaN (one per pixel would be 10^6)."""
    shapes = []
    for row in np.flatnonzero(mask.any(axis=1)):
        padded = np.concatenate([[False], mask[row], [False]])
        changes = np.flatnonzero(padded[1:] != padded[:-1])
        y0, y1 = y_edges[row], y_edges[row + 1]
        for start, stop in zip(changes[::2], changes[1::2], strict=True):
            x0, x1 = x_edges[start], x_edges[stop]
            shapes.append(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
    return shapes


def _nan_reason(dataset, data, nan) -> str:
    """Why a map is NaN where it is: a boolean variable of the output on the same pixels that is
    False wherever the map is NaN (`converged`, `zlp_found`), named with its long_name."""
    for name, var in dataset.data_vars.items():
        if var.dtype != bool or var.dims != data.dims or name == data.name:
            continue
        flags = np.asarray(_shrink(var).load().values)
        if flags.shape == nan.shape and not flags[nan].any():
            meaning = var.attrs.get("long_name")
            return f"where {name} is False" + (f" ({meaning})" if meaning else "")
    return "no reason recorded in the output"


def _draw_map(axes, figure, dataset, plot: Plot) -> None:
    from matplotlib import colormaps, colors
    from matplotlib.patches import Patch

    data = dataset[plot.variable]
    if data.ndim != 2:
        raise OpError(f"a map needs a 2-D variable; {plot.variable!r} has dims {data.dims}")
    image = _shrink(data).load()
    values = np.asarray(image.values, dtype=float)
    xs, ys, xlabel, ylabel = _pixel_axes(image)
    x_edges, y_edges = _edges(xs), _edges(ys)
    extent = (x_edges[0], x_edges[-1], y_edges[-1], y_edges[0])  # first row on top
    label = axis_label(data, plot.variable)
    found = np.unique(values[np.isfinite(values)])
    if _categorical(data) and ("flag_values" in data.attrs or found.size <= MAX_CATEGORIES):
        # labels (clusters, flags): one colour per label, a colour bar with one tick per label
        categories = np.asarray(data.attrs.get("flag_values", found), dtype=float).ravel()
        if categories.size == 0:
            categories = np.zeros(1)
        meanings = str(data.attrs.get("flag_meanings", "")).split()
        if data.dtype == bool and not meanings:
            meanings = [str(bool(c)) for c in categories]
        cmap = colors.ListedColormap(colormaps[plot.cmap].resampled(categories.size)(
            np.arange(categories.size)))
        norm = colors.BoundaryNorm(np.concatenate([categories - 0.5, [categories[-1] + 0.5]]), cmap.N)
        mesh = axes.imshow(np.ma.masked_invalid(values), origin="upper", cmap=cmap, norm=norm,
                           interpolation="nearest", extent=extent)
        bar = figure.colorbar(mesh, ax=axes, label=label, ticks=categories)
        bar.ax.set_yticklabels(meanings if len(meanings) == categories.size
                               else [f"{c:g}" for c in categories])
    else:
        cmap = colormaps[plot.cmap].with_extremes(bad=(0, 0, 0, 0))  # NaN: hatched below
        mesh = axes.imshow(np.ma.masked_invalid(values), origin="upper", cmap=cmap,
                           interpolation="nearest", extent=extent)
        figure.colorbar(mesh, ax=axes, label=label)
    nan = ~np.isfinite(values)
    if nan.any():  # hatched cells, and a legend entry that says how many and why
        from matplotlib.collections import PolyCollection

        axes.add_collection(PolyCollection(_runs(nan, x_edges, y_edges), facecolor="none", edgecolor="0.3",
                                           linewidth=0.0, hatch=NAN_HATCH))
        axes.legend(handles=[Patch(facecolor="white", edgecolor="0.3", hatch=NAN_HATCH,
                                   label=f"NaN ({int(nan.sum())} px): {_nan_reason(dataset, image, nan)}")],
                    loc="upper center", bbox_to_anchor=(0.5, -0.17), fontsize="small")
    axes.set_xlim(extent[0], extent[1])
    axes.set_ylim(extent[2], extent[3])
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)


def _x_of(data, name: str | None = None):
    """(values, label, coordinate) to plot a 1-D variable against: the coordinate `name`, else its
    dim's first 1-D coordinate, else positions."""
    (dim,) = data.dims
    if name is not None:
        coord = data.coords.get(name)
        if coord is None or coord.dims != (dim,):
            raise OpError(f"x: {name!r} is not a coordinate along {dim!r}; expected one of "
                          + ", ".join(str(c) for c, v in data.coords.items() if v.dims == (dim,)))
        return np.asarray(coord.values), axis_label(coord, name), coord
    for coord in data.coords.values():
        if coord.dims == (dim,):
            return np.asarray(coord.values), axis_label(coord, str(coord.name)), coord
    return np.arange(data.sizes[dim]), dim, None


def _groups(dataset, plot: Plot, size: int) -> list[tuple[np.ndarray, str]]:
    """(point mask, legend text) per colour: every point, or by `colour_by`'s value (its distinct
    values, or up to six bins, logarithmic for positive values such as Q^2)."""
    if plot.colour_by is None:
        return [(np.ones(size, bool), "")]
    coord = dataset[plot.colour_by]
    if np.asarray(coord.values).dtype.kind not in "iuf":  # labels (a dataset name): one colour each
        labels = np.asarray(coord.values).astype(str)
        return [(labels == v, f"{plot.colour_by} = {v}") for v in dict.fromkeys(labels)]
    values = np.asarray(coord.values, dtype=float)
    units = coord.attrs.get("units")
    unit = f" {units}" if units and str(units) != "1" else ""
    distinct = np.unique(values[np.isfinite(values)])
    if distinct.size <= 6:
        return [(values == v, f"{plot.colour_by} = {v:.3g}{unit}") for v in distinct]
    spacing = np.geomspace if distinct[0] > 0 else np.linspace
    edges = spacing(distinct[0], distinct[-1], 7)
    groups = []
    for k, (low, high) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        inside = (values >= low) & ((values <= high) if k == 5 else (values < high))
        if inside.any():
            groups.append((inside, f"{plot.colour_by} {low:.3g}-{high:.3g}{unit}"))
    return groups


def _draw_band(axes, dataset, plot: Plot) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    bands = dataset[f"{plot.variable}_quantile"].load()
    if bands.ndim != 2 or "quantile" not in bands.dims:
        raise OpError(f"a band plot needs {plot.variable}_quantile with dims (quantile, x); "
                      f"found {bands.dims}")
    low, mid, high = (bands.isel(quantile=i) for i in (0, bands.sizes["quantile"] // 2, -1))
    x, xlabel, _ = _x_of(mid, plot.x)
    q = bands["quantile"].values
    errors = {p for p in plot.points if f"{p}_low" in plot.points and f"{p}_high" in plot.points}
    points = [p for p in plot.points if not any(p in (f"{e}_low", f"{e}_high") for e in errors)]
    groups = _groups(dataset, plot, x.size)
    many = len(groups) > 1
    palette = _pyplot().get_cmap("plasma").resampled(len(groups) + 1)
    styles = dict(zip(plot.overlay, OVERLAY_STYLES * 4, strict=False))
    markers = {name: ("o" if name in errors else ".x^s"[j % 4]) for j, name in enumerate(points)}
    for k, (mask, group) in enumerate(groups):
        order = np.argsort(x[mask], kind="stable")
        xs = x[mask][order]
        colour = palette(k) if many else "C0"
        axes.fill_between(xs, low.values[mask][order], high.values[mask][order], alpha=0.25, color=colour,
                          label=f"{q[0]:.0%}-{q[-1]:.0%} of replicas")
        axes.plot(xs, mid.values[mask][order], color=colour, label=group or f"{plot.variable} "
                  f"({q[len(q) // 2]:.0%})")
        for name, (ink, dashes) in styles.items():
            axes.plot(xs, dataset[name].values[mask][order], color=colour if many else ink,
                      linestyle=dashes, label=name)
        for j, name in enumerate(points):
            values = dataset[name].values[mask][order]
            ink = colour if many else ("black" if name in errors else f"C{j + 1}")
            if name in errors:
                yerr = np.abs([values - dataset[f"{name}_low"].values[mask][order],
                               dataset[f"{name}_high"].values[mask][order] - values])
                axes.errorbar(xs, values, yerr=yerr, fmt=markers[name], markersize=3, color=ink,
                              elinewidth=0.8, capsize=1.5, label=f"{name} +- ({name}_low, {name}_high)")
            else:
                axes.plot(xs, values, markers[name], markersize=4, color=ink, label=name)
    if many:  # one entry per colour, then what each line style or marker means, in black
        handles = [Line2D([], [], color=palette(k), label=group) for k, (_, group) in enumerate(groups)]
        handles.append(Patch(color="0.6", alpha=0.5, label=f"{q[0]:.0%}-{q[-1]:.0%} of replicas"))
        handles += [Line2D([], [], color="black", linestyle=dashes, label=name)
                    for name, (_, dashes) in styles.items()]
        handles += [Line2D([], [], color="black", marker=markers[name], linestyle="none",
                           label=name + (f" +- ({name}_low, {name}_high)" if name in errors else ""))
                    for name in points]
        axes.legend(handles=handles, fontsize="small")
    else:
        axes.legend(fontsize="small")
    if plot.log_x:
        axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(axis_label(_first_with_attrs(dataset, plot.variable), plot.variable))


def _first_with_attrs(dataset, base: str):
    """The variable whose attributes describe a replicas.summary base name (its mean or quantiles)."""
    for name in (base, f"{base}_mean", f"{base}_quantile"):
        if name in dataset.variables and dataset[name].attrs.get("long_name"):
            return dataset[name]
    return dataset[f"{base}_quantile"] if f"{base}_quantile" in dataset.variables else dataset[base]


def _draw_scan(axes, dataset, plot: Plot) -> None:
    """-2 Delta log L curves with the 1-dof 95% line, or 2-D contours at the 2-dof 95% level."""
    names = [plot.variable, *plot.overlay]
    first = dataset[plot.variable]
    if first.ndim == 1:
        x, label, _ = _x_of(first, plot.x)
        for k, name in enumerate(names):
            ink, dashes = ("C0", "-") if k == 0 else OVERLAY_STYLES[(k - 1) % len(OVERLAY_STYLES)]
            axes.plot(x, dataset[name].values, color=ink, linestyle=dashes, label=name)
        level = float(dataset.attrs.get("level", 3.84))
        axes.axhline(level, color="grey", linestyle=":", label=f"95% ({level:g})")
        axes.set_ylim(0, 4 * level)
        axes.set_xlabel(label)
        axes.set_ylabel(r"$-2\,\Delta \log L$")
        axes.legend()
    elif first.ndim == 2:
        from matplotlib.lines import Line2D

        level = float(dataset.attrs.get("contour_level_2d", 5.99))
        ydim, xdim = first.dims
        handles = []
        for k, name in enumerate(names):
            ink, dashes = ("C0", "-") if k == 0 else OVERLAY_STYLES[(k - 1) % len(OVERLAY_STYLES)]
            axes.contour(dataset[xdim].values, dataset[ydim].values, dataset[name].values,
                         levels=[level], colors=[ink], linestyles=[dashes])
            handles.append(Line2D([], [], color=ink, linestyle=dashes, label=f"{name} 95% ({level:g})"))
        axes.legend(handles=handles)
        axes.set_xlabel(axis_label(dataset[xdim], xdim))
        axes.set_ylabel(axis_label(dataset[ydim], ydim))
    else:
        raise OpError(f"a scan plot needs a 1-D or 2-D variable; {plot.variable!r} has dims {first.dims}")


def _draw_roc(axes, dataset, plot: Plot) -> None:
    """Background rejection 1/eps_B against signal efficiency (log scale): median and 68% band
    over replicas of `variable`, eps_B with dims (replica, signal_efficiency). Where no background
    jet of the test set passes (eps_B = 0) the rejection is only bounded below, by the number of
    background test jets: those points are drawn as upward arrows at that bound, not as values."""
    eps_b = dataset[plot.variable].load()
    if eps_b.dims != ("replica", "signal_efficiency"):
        raise OpError(f"a roc plot needs {plot.variable!r} with dims (replica, signal_efficiency); "
                      f"found {eps_b.dims}")
    n_background = int(dataset["n_background_test"]) if "n_background_test" in dataset else 1
    floor = 1.0 / max(n_background, 1)
    rejection = 1.0 / eps_b.clip(min=floor)
    low, mid, high = (rejection.quantile(q, dim="replica") for q in (0.16, 0.5, 0.84))
    x = eps_b["signal_efficiency"].values
    limit = eps_b.quantile(0.5, dim="replica").values <= 0  # the median replica lets none through
    measured = np.where(limit, np.nan, mid.values)
    axes.fill_between(x, low.values, high.values, alpha=0.3, label="16-84% of replicas")
    axes.plot(x, measured, label="median")
    if limit.any():
        axes.plot(x[limit], mid.values[limit], linestyle="none", marker=r"$\uparrow$", markersize=18,
                  color="C3", label=f"lower limit: no background passes (1/eps_B > {n_background})")
    if "quoted_signal_efficiency" in dataset.attrs:
        axes.axvline(float(dataset.attrs["quoted_signal_efficiency"]), color="grey", linestyle=":")
    axes.set_yscale("log")
    axes.set_xlabel(r"signal efficiency $\epsilon_S$")
    axes.set_ylabel(r"background rejection $1/\epsilon_B$")
    axes.legend(loc="lower left", fontsize="small")  # (rejection falls with eps_S: that corner is free)


def _draw_hist(axes, dataset, plot: Plot, hep) -> None:
    """Counts as steps over the bin edges (`<dim>_edges`), with sqrt(variances) error bars."""
    counts = dataset[plot.variable].load()
    if counts.ndim != 1 or f"{counts.dims[0]}_edges" not in dataset.coords:
        raise OpError(f"a hist plot needs a 1-D histogram with '<dim>_edges' (an lhc.histogram "
                      f"output); {plot.variable!r} has dims {counts.dims}")
    (dim,) = counts.dims
    edges = dataset[f"{dim}_edges"].values
    errors = np.sqrt(dataset["variances"].values) if "variances" in dataset else None
    if hep is not None:
        hep.histplot(counts.values, edges, yerr=errors if errors is not None else False, ax=axes,
                     label=plot.variable, histtype="step")
    else:
        axes.stairs(counts.values, edges, label=plot.variable)
        if errors is not None:
            axes.errorbar(dataset[dim].values, counts.values, yerr=errors, fmt="none", ecolor="black",
                          elinewidth=0.8)
    axes.set_xlabel(axis_label(dataset[dim], dim))
    axes.set_ylabel(axis_label(counts, plot.variable))


def _draw_line(axes, dataset, plot: Plot) -> None:
    data = dataset[plot.variable]
    if data.ndim != 1:
        raise OpError(f"a line plot needs a 1-D variable; {plot.variable!r} has dims {data.dims}")
    x, xlabel, _ = _x_of(data, plot.x)
    axes.plot(x, data.load().values, label=plot.variable)
    for name, (ink, dashes) in zip(plot.overlay, OVERLAY_STYLES * 4, strict=False):
        axes.plot(x, dataset[name].values, color=ink, linestyle=dashes, label=name)
    if plot.overlay:
        axes.legend()
    if plot.log_x:
        axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(axis_label(data, plot.variable))


HEP_KINDS = ("hist", "roc", "scan")


def _hep_module(plot: Plot):
    """mplhep for a plot in HEP style (`style: hep`, or `auto` for hist, roc and scan); None for
    others and where mplhep (the lhc extra) is not installed (an `auto` plot is then plain)."""
    if plot.style == "plain" or (plot.style == "auto" and plot.kind not in HEP_KINDS):
        return None
    try:
        import mplhep
    except ImportError:
        if plot.style == "hep":
            raise OpError("style: hep needs mplhep; install it with: pip install "
                          "'replicalake[lhc]'") from None
        return None
    return mplhep


def render(dataset, plot: Plot, name: str):
    """The figure of one plot of a dataset (a published entry, or any dataset in tests)."""
    from contextlib import nullcontext

    missing = missing_plot_variables(dataset, plot)
    if missing:
        raise OpError(f"plot of {name}: {missing[0][1]}")
    plt = _pyplot()
    hep = _hep_module(plot)
    with plt.style.context(hep.style.ROOT) if hep is not None else nullcontext():
        # mplhep's styles are sized for a 10 x 10 inch figure (26 pt text): keep their proportions
        size, dpi = ((10, 9), 72) if hep is not None else ((6, 5), 120)
        figure, axes = plt.subplots(figsize=size, dpi=dpi)
        if plot.kind == "map":
            _draw_map(axes, figure, dataset, plot)
        elif plot.kind == "band":
            _draw_band(axes, dataset, plot)
        elif plot.kind == "roc":
            _draw_roc(axes, dataset, plot)
        elif plot.kind == "scan":
            _draw_scan(axes, dataset, plot)
        elif plot.kind == "hist":
            _draw_hist(axes, dataset, plot, hep)
        else:
            _draw_line(axes, dataset, plot)
        axes.set_title(plot.title or f"{name}: {plot.variable}", fontsize="medium")
        figure.hep_style = hep is not None  # (for tests and the HTML report)
    return figure


def draw_plot(lake: Lake, zone: str, name: str, plot: Plot) -> str:
    """Draw one plot of a published entry and write it atomically; return its path."""
    figure = render(lake.open(zone, name), plot, f"{zone}/{name}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    _pyplot().close(figure)
    path = report_path(lake, zone, name, plot)
    lake.write_bytes_atomic(path, buffer.getvalue())
    return path
