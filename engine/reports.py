"""PNG pictures of published outputs, written to the lake's reports/ zone.

A picture is made from the published store (not from the graph) so what a person sees is what
the lake holds. Maps larger than the figure are coarsened with a block mean, lazily, so a
10^6-pixel map never needs more than the figure's resolution in memory.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .errors import OpError, did_you_mean  # noqa: E402
from .recipe import Plot  # noqa: E402
from .storage import Lake  # noqa: E402

MAX_PIXELS_PER_SIDE = 1024


def report_path(lake: Lake, zone: str, name: str, plot: Plot) -> str:
    return lake.entry_path("reports", f"{zone}/{name}/{plot.variable}.png")


def draw_plot(lake: Lake, zone: str, name: str, plot: Plot) -> str:
    """Draw one plot of a published entry and write it atomically; return its path."""
    dataset = lake.open(zone, name)
    if plot.variable not in dataset.data_vars:
        raise OpError(f"plot variable {plot.variable!r} is not in output {zone}/{name}"
                      f"{did_you_mean(plot.variable, dataset.data_vars)}")
    data = dataset[plot.variable]
    figure, axes = plt.subplots(figsize=(6, 5), dpi=120)
    if plot.kind == "map":
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
    else:
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
