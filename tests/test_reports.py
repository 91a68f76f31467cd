"""Plots that tell the truth (engine/reports.py): labels and units from attributes, overlays that
look different, categorical colour bars, NaN pixels with their reason, PDF data with error bars
by Q^2 on log x, ROC lower limits and HEP styles. Checked on the drawn artists, not on pixels."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import xarray as xr
from matplotlib.collections import PolyCollection
from matplotlib.ticker import NullLocator

from engine.errors import OpError
from engine.recipe import Plot
from engine.reports import _pyplot, draw_plot, render

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    _pyplot().close("all")


def legend_texts(axes) -> list[str]:
    legend = axes.get_legend()
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def band_dataset(n: int = 12, seed: int = 0) -> xr.Dataset:
    """A replicas.summary-like output: prediction quantiles over points with x and Q2 coordinates."""
    rng = np.random.default_rng(seed)
    x = np.geomspace(0.01, 0.8, n)
    q2 = np.tile([4.0, 20.0, 100.0], n // 3 + 1)[:n]
    central = 1.0 - x
    quantiles = np.stack([central - 0.05, central, central + 0.05])
    data = central + rng.normal(0, 0.02, n)
    return xr.Dataset(
        {
            "prediction_quantile": (("quantile", "point"), quantiles),
            "prediction_mean": ("point", central, {"long_name": "F2", "units": "1"}),
            "data": ("point", data),
            "data_low": ("point", data - 0.03),
            "data_high": ("point", data + 0.03),
            "truth": ("point", central + 0.01),
            "mc": ("point", central - 0.01),
        },
        coords={
            "point": np.arange(n),
            "quantile": [0.16, 0.5, 0.84],
            "x": ("point", x, {"long_name": "Bjorken x"}),
            "Q2": ("point", q2, {"long_name": "Q^2", "units": "GeV^2"}),
        },
    )


def test_band_labels_from_attributes_and_overlays_differ():
    figure = render(
        band_dataset(), Plot(variable="prediction", kind="band", x="x", overlay=["truth", "mc"]), "omnifold"
    )
    (axes,) = figure.axes[:1]
    assert axes.get_xlabel() == "Bjorken x" and axes.get_ylabel() == "F2"
    lines = {line.get_label(): line for line in axes.get_lines()}
    truth, mc = lines["truth"], lines["mc"]
    assert (truth.get_color(), truth.get_linestyle()) != (mc.get_color(), mc.get_linestyle())
    assert {"truth", "mc", "16%-84% of replicas"} <= set(legend_texts(axes))


def test_pdf_data_with_error_bars_per_q2_colours_on_log_x():
    plot = Plot(
        variable="prediction",
        kind="band",
        x="x",
        log_x=True,
        colour_by="Q2",
        points=["data", "data_low", "data_high"],
    )
    axes = render(band_dataset(), plot, "bcdms").axes[0]
    assert axes.get_xscale() == "log"
    texts = legend_texts(axes)
    assert [t for t in texts if t.startswith("Q2 = ")] == ["Q2 = 4 GeV^2", "Q2 = 20 GeV^2", "Q2 = 100 GeV^2"]
    assert "data +- (data_low, data_high)" in texts and not any(t == "data_low" for t in texts)
    bars = [c for c in axes.containers if isinstance(c, matplotlib.container.ErrorbarContainer)]
    assert len(bars) == 3  # one per Q^2 group, each coloured like its band
    colours = {tuple(np.round(bar.lines[0].get_color(), 3)) for bar in bars}
    assert len(colours) == 3
    # many distinct Q^2 values fall into at most six logarithmic bins
    many = band_dataset(40).assign_coords(Q2=("point", np.geomspace(2, 200, 40), {"units": "GeV^2"}))
    texts = legend_texts(render(many, plot, "many").axes[0])
    groups = [t for t in texts if t.startswith("Q2 ")]
    assert len(groups) == 6 and groups[0] == "Q2 2-4.31 GeV^2" and groups[-1] == "Q2 92.8-200 GeV^2"


def test_a_band_x_that_is_no_coordinate_is_a_clear_error():
    with pytest.raises(OpError, match="variable 'Q' is not in the output"):
        render(band_dataset(), Plot(variable="prediction", kind="band", x="Q"), "bcdms")
    data = band_dataset().assign(other=("other_dim", [1.0, 2.0]))
    with pytest.raises(OpError, match="x: 'other' is not a coordinate along 'point'; expected one of"):
        render(data.set_coords("other"), Plot(variable="prediction", kind="band", x="other"), "bcdms")


def map_dataset(seed: int = 3) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    e_bg = rng.normal(1.8, 0.1, (20, 30)).astype(np.float32)
    converged = np.ones((20, 30), bool)
    converged[2:5, 7:9] = False
    e_bg[~converged] = np.nan
    return xr.Dataset(
        {
            "e_bg": (("y", "x"), e_bg, {"long_name": "band gap E_BG", "units": "eV"}),
            "converged": (("y", "x"), converged, {"long_name": "fit converged"}),
            "cluster": (("y", "x"), rng.integers(-1, 4, (20, 30)), {"long_name": "cluster label"}),
        },
        coords={
            "y": ("y", np.arange(20) * 0.5, {"units": "nm"}),
            "x": ("x", np.arange(30) * 0.5, {"units": "nm"}),
        },
    )


def test_map_axes_units_and_nan_pixels_with_their_reason():
    figure = render(map_dataset(), Plot(variable="e_bg"), "bandgap")
    axes, bar = figure.axes
    assert axes.get_xlabel() == "x [nm]" and axes.get_ylabel() == "y [nm]"
    assert bar.get_ylabel() == "band gap E_BG [eV]"
    assert axes.get_xlim() == pytest.approx((-0.25, 14.75))  # calibrated extent, half a pixel out
    assert legend_texts(axes) == ["NaN (6 px): where converged is False (fit converged)"]
    hatched = [c for c in axes.collections if isinstance(c, PolyCollection) and c.get_hatch()]
    assert len(hatched) == 1
    # NaN with nothing that explains it says so; a map without NaN has no legend
    unexplained = map_dataset().drop_vars("converged")
    assert legend_texts(render(unexplained, Plot(variable="e_bg"), "b").axes[0]) == [
        "NaN (6 px): no reason recorded in the output"
    ]
    assert legend_texts(render(map_dataset(), Plot(variable="cluster"), "c").axes[0]) == []


def test_cluster_maps_get_a_categorical_colour_bar():
    figure = render(map_dataset(), Plot(variable="cluster", cmap="tab10"), "clusters")
    axes, bar = figure.axes
    assert [t.get_text() for t in bar.get_yticklabels()] == ["-1", "0", "1", "2", "3"]
    image = axes.get_images()[0]
    assert image.cmap.N == 5 and isinstance(image.norm, matplotlib.colors.BoundaryNorm)
    named = map_dataset()
    named["cluster"].attrs.update(
        flag_values=[-1, 0, 1, 2, 3], flag_meanings="unlabelled thinnest thin thick thickest"
    )
    bar = render(named, Plot(variable="cluster"), "clusters").axes[1]
    assert [t.get_text() for t in bar.get_yticklabels()][:2] == ["unlabelled", "thinnest"]


def test_flags_name_their_ticks_and_many_integers_are_a_quantity():
    data = map_dataset()
    bar = render(data, Plot(variable="converged"), "c").axes[1]
    assert [t.get_text() for t in bar.get_yticklabels()] == ["False", "True"]
    counts = data.assign(hits=(("y", "x"), np.arange(600).reshape(20, 30)))
    image = render(counts, Plot(variable="hits"), "c").axes[0].get_images()[0]
    assert not isinstance(image.norm, matplotlib.colors.BoundaryNorm)  # 600 values: a plain colour bar


def test_large_label_maps_are_subsampled_not_averaged(monkeypatch):
    from engine import reports

    monkeypatch.setattr(reports, "MAX_PIXELS_PER_SIDE", 10)
    image = render(map_dataset(), Plot(variable="cluster"), "c").axes[0].get_images()[0]
    values = np.asarray(image.get_array())
    assert values.shape == (10, 10) and np.all(values == np.round(values))


def roc_dataset(n_background: int = 50) -> xr.Dataset:
    efficiency = np.linspace(0.1, 1.0, 10)
    eps_b = np.tile(np.where(efficiency < 0.35, 0.0, efficiency**3), (5, 1))
    return xr.Dataset(
        {
            "background_efficiency": (("replica", "signal_efficiency"), eps_b),
            "n_background_test": ((), n_background),
        },
        coords={"signal_efficiency": efficiency},
    )


def test_roc_marks_rejections_where_no_background_passes_as_lower_limits():
    axes = render(roc_dataset(), Plot(variable="background_efficiency", kind="roc"), "tagger").axes[0]
    lines = {line.get_label(): line for line in axes.get_lines()}
    limit = lines["lower limit: no background passes (1/eps_B > 50)"]
    assert list(limit.get_xdata()) == pytest.approx([0.1, 0.2, 0.3])
    assert list(limit.get_ydata()) == pytest.approx([50, 50, 50])
    median = np.asarray(lines["median"].get_ydata(), float)
    assert np.isnan(median[:3]).all() and np.isfinite(median[3:]).all()  # no value drawn at a limit
    assert axes.get_yscale() == "log"


def test_hep_kinds_use_mplhep_styles_and_others_stay_plain():
    pytest.importorskip("mplhep")
    edges = np.linspace(60, 120, 7)
    hist = xr.Dataset(
        {
            "counts": ("mass", [3.0, 5, 9, 20, 7, 2], {"long_name": "events"}),
            "variances": ("mass", [3.0, 5, 9, 20, 7, 2]),
        },
        coords={
            "mass": ("mass", (edges[1:] + edges[:-1]) / 2, {"long_name": "m(mu mu)", "units": "GeV"}),
            "mass_edges": ("mass_edge", edges),
        },
    )
    figure = render(hist, Plot(variable="counts", kind="hist"), "dimuon")
    axes = figure.axes[0]
    assert figure.hep_style and axes.get_xlabel() == "m(mu mu) [GeV]" and axes.get_ylabel() == "events"
    assert not isinstance(axes.xaxis.get_minor_locator(), NullLocator)  # ROOT style: minor ticks
    assert not render(hist, Plot(variable="counts", kind="hist", style="plain"), "d").hep_style
    band = render(band_dataset(), Plot(variable="prediction", kind="band"), "b")
    assert not band.hep_style and isinstance(band.axes[0].xaxis.get_minor_locator(), NullLocator)
    assert render(band_dataset(), Plot(variable="prediction", kind="band", style="hep"), "b").hep_style


def test_scan_overlays_differ_and_line_plots_label_axes():
    c = np.linspace(-1, 1, 21)
    curves = {name: ("c1", (1 + k * 0.1) * 10 * c**2) for k, name in enumerate(("q_nn", "q_a", "q_b"))}
    scan = xr.Dataset(curves, coords={"c1": ("c1", c, {"long_name": "Wilson coefficient c1"})})
    axes = render(scan, Plot(variable="q_nn", kind="scan", overlay=["q_a", "q_b"]), "eft").axes[0]
    styles = {(line.get_color(), line.get_linestyle()) for line in axes.get_lines()[:3]}
    assert len(styles) == 3 and axes.get_xlabel() == "Wilson coefficient c1"
    loss = np.linspace(4, 60, 30)
    spectrum = xr.Dataset(
        {"eps2": ("loss", np.exp(-loss / 20), {"long_name": "eps2", "units": "1"})},
        coords={"loss": ("loss", loss, {"long_name": "energy loss", "units": "eV"})},
    )
    axes = render(spectrum, Plot(variable="eps2", kind="line"), "spectrum").axes[0]
    assert axes.get_xlabel() == "energy loss [eV]" and axes.get_ylabel() == "eps2"


def test_draw_plot_writes_a_png_of_the_published_entry(lake):
    from engine.testing import put_in_lake

    put_in_lake(lake, "bandgap", map_dataset())
    path = draw_plot(lake, "raw", "bandgap", Plot(variable="e_bg"))
    assert path.endswith("reports/raw/bandgap/e_bg.png") and lake.fs.cat_file(path)[:4] == b"\x89PNG"
