"""One tiny valid call of every registered op, for the op contract test (tests/test_op_contract.py).

Why: the contract test checks every registered op the same way (params forbid extra keys, a
docstring, a lazy build that computes nothing, a stable token), so it needs one valid call of
each, and an op without one fails it: a new op cannot skip the checks. Examples are recipe steps
in miniature: an input is either a small in-memory source or another `Step`, built lazily the
way `compile_recipe` chains steps, so an example stays valid when the op upstream of it changes.
Each op's example is registered with `example(...)`; a plugin can register its own the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from .fingerprint import code_fingerprint
from .graph import step_token
from .registry import StepContext, get_op
from .storage import content_token
from .testing import ramp_dataset

Source = Callable[[], xr.Dataset]


@dataclass(frozen=True, eq=False)  # identity, not value: a step used twice is built once
class Step:
    """An op applied to inputs (sources or other steps) with params, as in a recipe."""

    op: str
    inputs: dict[str, Source | Step] = field(default_factory=dict)
    params: dict = field(default_factory=dict)


EXAMPLES: dict[str, Step] = {}


def example(step: Step) -> Step:
    """Make `step` the example of its op in the contract test; returns it for use as an input."""
    if step.op in EXAMPLES:
        raise ValueError(f"op {step.op!r} already has an example; expected one per op")
    EXAMPLES[step.op] = step
    return step


def build(step: Step, lake_url: str,
          built: dict[int, tuple[xr.Dataset, str]] | None = None) -> tuple[xr.Dataset, str]:
    """The step's lazy output and the content token `compile_recipe` would give it.

    `built` maps steps (and sources) already built to their results, so each is built once per
    call tree: pass the dict given to `built_inputs` to build only the step itself.
    """
    built = {} if built is None else built
    if id(step) not in built:
        inputs = built_inputs(step, lake_url, built)
        spec = get_op(step.op)
        params = spec.params.model_validate(step.params)
        token = step_token(spec, params.model_dump(mode="json"), {k: t for k, (_, t) in inputs.items()},
                           code_fingerprint(spec.func.__module__))
        context = {"context": StepContext(step.op, token, lake_url)} if spec.wants_context else {}
        built[id(step)] = (spec.func(params, **{k: d for k, (d, _) in inputs.items()}, **context), token)
    return built[id(step)]


def built_inputs(step: Step, lake_url: str,
                 built: dict[int, tuple[xr.Dataset, str]]) -> dict[str, tuple[xr.Dataset, str]]:
    """Each input of `step` as (lazy dataset, content token), recording what it built in `built`."""
    return {name: build(source, lake_url, built) if isinstance(source, Step) else _source(source, built)
            for name, source in step.inputs.items()}


def _source(source: Source, built: dict[int, tuple[xr.Dataset, str]]) -> tuple[xr.Dataset, str]:
    if id(source) not in built:
        built[id(source)] = (source(), content_token("example source", source.__name__))
    return built[id(source)]


# -- sources: small in-memory datasets chunked like lake entries ----------------------------------
def eels_image() -> xr.Dataset:
    """A 6 x 6 pixel low-loss image (-5 ... 46 eV, 256 channels) from the synthetic generator."""
    from .kernels import eels_synth

    energy = eels_synth.energy_axis(256)
    block = eels_synth.simulate_block((6, 6), (0, 0), (6, 6), energy, seed=3)
    variables = {name: (("y", "x", "energy")[:value.ndim], value) for name, value in block.items()}
    return xr.Dataset(variables, coords={"y": np.arange(6), "x": np.arange(6), "energy": energy},
                      attrs={"beam_energy_kev": 200.0}).chunk({"y": 3, "x": 3, "energy": -1})


def dimuon_events() -> xr.Dataset:
    """40 events with flat per-muon columns (charge, pt, eta, phi, mass), as from a ROOT tree."""
    rng = np.random.default_rng(5)
    n = 40
    columns = {}
    for i in (1, 2):
        columns |= {f"Q{i}": rng.choice([-1, 1], n), f"pt{i}": rng.uniform(5, 60, n),
                    f"eta{i}": rng.uniform(-2.4, 2.4, n), f"phi{i}": rng.uniform(-np.pi, np.pi, n),
                    f"m{i}": np.full(n, 0.1057)}
    return xr.Dataset({k: ("event", v) for k, v in columns.items()}).chunk({"event": 20})


def top_jets() -> xr.Dataset:
    """40 synthetic jets (half top) of 8 constituents, in the jet-table layout."""
    from .kernels.jets_synth import simulate_jets

    jets = simulate_jets(40, seed=2, n_constituents=8)
    return xr.Dataset({name: (("jet", "constituent")[:value.ndim], value)
                       for name, value in jets.items()}).chunk({"jet": 20})


def calo_showers() -> xr.Dataset:
    """40 synthetic showers of 2 layers x 2x2 cells, in the `ingest synthetic-calo` layout."""
    from .kernels.calo_synth import simulate_showers

    showers = simulate_showers(40, seed=4, n_layers=2, n_side=2)
    return xr.Dataset({"energy": (("shower", "layer", "cell"), showers["energy"]),
                       "incident_energy": ("shower", showers["incident_energy"])},
                      attrs={"quantum": 0.01}).chunk({"shower": 20})


def dis_points() -> xr.Dataset:
    """Six F2 points of two datasets (proton, deuteron) in the `ingest nnpdf` layout."""
    x = np.array([0.05, 0.1, 0.3, 0.07, 0.2, 0.4])
    data = np.array([0.35, 0.36, 0.3, 0.34, 0.32, 0.22])
    stat = 0.02 * data
    additive = 0.005 * np.ones((6, 1))
    multiplicative = 0.03 * np.ones((6, 1))
    covariance = np.diag(stat**2) + additive @ additive.T + np.outer(data, data) * 0.03**2
    return xr.Dataset(
        {"data": ("point", data), "stat": ("point", stat), "uncorrelated": ("point", stat),
         "sys_uncorrelated": ("point", np.zeros(6)), "dataset_index": ("point", [0, 0, 0, 1, 1, 1]),
         "sys_additive": (("point", "sys_add"), additive),
         "sys_multiplicative": (("point", "sys_mult"), multiplicative),
         "covariance": (("point", "point_b"), covariance)},
        coords={"x": ("point", x), "Q2": ("point", np.full(6, 10.0)),
                "target_index": ("point", [0, 0, 0, 1, 1, 1])},
        attrs={"datasets": ["TOY_P", "TOY_D"], "dataset_points": [3, 3]}).chunk()


def replica_set() -> xr.Dataset:
    """A Monte Carlo PDF set of 8 replicas (+ member 0): 3 flavours, 6 x knots, 2 Q knots."""
    from .ingest.lhapdf_format import pdfset_from_arrays

    rng = np.random.default_rng(4)
    x = np.geomspace(1e-3, 0.8, 6)
    values = (1 - x)[None, None, :, None] * (1 + 0.1 * rng.standard_normal((8, 3, 6, 1))) * np.ones(2)
    values = np.concatenate([values.mean(0, keepdims=True), values])
    return pdfset_from_arrays([x], [np.array([1.4, 10.0])], [1, 2, 21], [values],
                              {"SetDesc": "example replicas", "ErrorType": "replicas"}).chunk({"member": 5})


def evolution_operators() -> xr.Dataset:
    """An `ingest eko-evolution` entry on pdf.fitted_set's default grid from the toy's Q0: identity."""
    from .ingest.eko_evolution import synthetic_evolution
    from .kernels.pdf_fk import x_grid

    return synthetic_evolution(x_grid(), float(np.sqrt(2.0))).chunk({"node": 1})


def pdf_points() -> xr.Dataset:
    """Four (x, Q) points inside the toy PDF set's grid."""
    return xr.Dataset({"x": ("point", [0.01, 0.1, 0.3, 0.6]),
                       "q": ("point", [2.0, 5.0, 10.0, 50.0])}).chunk({"point": 2})


# -- one example per op -------------------------------------------------------------------------
SMALL_NET = {"epochs": 4, "validation_every": 2, "device": "cpu"}

example(Step("core.select", {"data": ramp_dataset}, {"ranges": {"y": [1, 4]}, "variables": ["a"]}))
example(Step("core.sum", {"data": ramp_dataset}, {"dims": ["y"]}))
example(Step("core.mean", {"data": ramp_dataset}, {"dims": ["x"]}))
example(Step("core.rechunk", {"data": ramp_dataset}, {"chunks": {"y": 2, "x": -1}}))

ALIGNED = example(Step("eels.align_zlp", {"image": eels_image}))
example(Step("eels.thickness", {"image": ALIGNED}, {"mean_free_path_nm": 100.0}))
CLUSTERS = example(Step("eels.cluster", {"image": ALIGNED},
                        {"n_clusters": 2, "seed": 1, "batch_size": 16, "init_size": 16, "n_init": 1}))
WINDOWS = example(Step("eels.zlp_windows", {"image": ALIGNED, "clusters": CLUSTERS},
                       {"n_sample": 8, "min_pixels": 1}))
ZLP_MODEL = example(Step("eels.train_zlp", {"image": ALIGNED, "clusters": CLUSTERS, "windows": WINDOWS},
                         {"replicas": 2, "hidden": [3], "activations": ["sigmoid", "linear"],
                          "n_spectra": 4, **SMALL_NET}))
INELASTIC = example(Step("eels.subtract_zlp", {"image": ALIGNED, "model": ZLP_MODEL, "clusters": CLUSTERS,
                                               "windows": WINDOWS}, {"grid_size": 8}))
example(Step("eels.fit_bandgap", {"inelastic": INELASTIC, "clusters": CLUSTERS, "windows": WINDOWS},
             {"window_ev": [1.0, 3.0], "exponent": 1.5, "resolution_ev": "cluster"}))
example(Step("eels.kramers_kronig", {"image": ALIGNED, "inelastic": INELASTIC},
             {"refractive_index": None, "collection_angle_mrad": 10.0}))
V1_MODEL = example(Step("eels.eelsfitter_v1_train", {"image": eels_image, "clusters": CLUSTERS},
                        {"replicas": 2, "n_bins": 4, "n_spectra": 4, "checkpoint_every": None,
                         **SMALL_NET}))
example(Step("eels.eelsfitter_v1", {"image": eels_image, "model": V1_MODEL}))

SELECTED = example(Step("lhc.select", {"events": dimuon_events}, {"cut": "Q1 * Q2 < 0 and pt1 > 20"}))
KINEMATICS = example(Step("lhc.kinematics", {"events": SELECTED}, {"prefix": "mu", "objects": [
    {"pt": f"pt{i}", "eta": f"eta{i}", "phi": f"phi{i}", "mass": f"m{i}"} for i in (1, 2)]}))
example(Step("lhc.histogram", {"events": KINEMATICS},
             {"axes": [{"variable": "mu12_mass", "bins": 10, "start": 0.0, "stop": 120.0}]}))

EFT_EVENTS = example(Step("lhc.eft_toy_events", params={
    "coefficients": ["c1"], "c_train": {"c1": 2.0}, "n_events": 200, "replicas": 2, "chunk_events": 100,
    "seed": 1}))
EFT_DATA = example(Step("lhc.eft_toy_pseudodata", params={"c_true": {"c1": 0.0}, "luminosity": 20.0}))
EFT_MODEL = example(Step("lhc.eft_train", {"events": EFT_EVENTS}, {
    "coefficients": ["c1"], "hidden": [4], "activations": ["tanh", "linear"], **SMALL_NET}))
example(Step("lhc.eft_ratio", {"model": EFT_MODEL, "data": EFT_DATA}, {"points": [{"c1": 1.0}]}))
example(Step("lhc.eft_bounds", {"model": EFT_MODEL, "data": EFT_DATA, "events": EFT_EVENTS}, {
    "grid": {"c1": [-1.0, 1.0, 21]}, "binned": {"feature": "x1", "edges": [0.0, 1.0, 2.0, 5.0]},
    "exact_toy": True}))

UNFOLDING = example(Step("lhc.gaussian_unfolding_samples", params={"n_mc": 200, "n_data": 200, "seed": 1}))
example(Step("lhc.omnifold", {"samples": UNFOLDING}, {
    "iterations": 1, "replicas": 2, "hidden": [4], "activations": ["tanh", "linear"], "epochs": 4,
    "bins": 5, "device": "cpu"}))

TAGGER_NET = {"n_constituents": 4, "epochs": 4, "replicas": 2, "device": "cpu"}
TAGGER = example(Step("lhc.train_classifier", {"jets": top_jets}, {
    "hidden": [4], "activations": ["relu", "linear"], **TAGGER_NET,
    "adversary": {"strength": 1.0, "bins": 3, "hidden": [3], "pretrain": 2}}))
example(Step("lhc.anomaly_score", {"jets": top_jets}, {
    "hidden": [3], "activations": ["tanh", "linear"], **TAGGER_NET}))
example(Step("lhc.score_jets", {"model": TAGGER, "jets": top_jets}))

CALO_FLOW = example(Step("calo.train_flow", {"showers": calo_showers}, {
    "transforms": 1, "hidden": [4], "epochs": 2, "batch_size": 16}))
CALO_GENERATED = example(Step("calo.sample", {"model": CALO_FLOW, "conditions": calo_showers}))
example(Step("calo.metrics", {"generated": CALO_GENERATED, "reference": calo_showers, "model": CALO_FLOW}, {
    "replicas": 2, "hidden": [4], "epochs": 4, "batch_size": 16, "bins": 5, "speed_showers": 10}))

THEORY = example(Step("pdf.fk_tables", {"data": dis_points}))
TRUTH = example(Step("pdf.toy_truth"))
LEVEL1 = example(Step("pdf.level1", {"theory": THEORY, "truth": TRUTH}, {"seed": 1}))
example(Step("pdf.t0_covariance", {"theory": THEORY, "pdf": TRUTH}))
PDF_REPLICAS = example(Step("replicas.pseudodata", {"data": LEVEL1}, {
    "central": "data", "stat": None, "covariance": "covariance", "group": "dataset_index",
    "replicas": 2, "seed": 2}))
PDF_MODEL = example(Step("pdf.fit", {"data": PDF_REPLICAS, "theory": THEORY},
                         {"basis": ["Sigma", "T3"], "hidden": [4], "activations": ["tanh", "linear"],
                          **SMALL_NET}))
FITTED = example(Step("pdf.fitted_set", {"model": PDF_MODEL}))
example(Step("pdf.evolve", {"pdf": FITTED, "evolution": evolution_operators}))
PREDICTION = example(Step("pdf.predict", {"pdf": FITTED, "theory": LEVEL1, "truth": TRUTH}))
example(Step("pdf.closure", {"data": PREDICTION}))
example(Step("pdf.dataset_view", {"data": PREDICTION}, {"dataset": "TOY_P"}))
example(Step("pdf.chi2_by_dataset", {"data": PREDICTION}))
example(Step("pdf.x_scan", params={"n_points": 5}))
example(Step("pdf.evaluate", {"pdf": TRUTH, "points": pdf_points}))

TOY = example(Step("replicas.toy_regression", params={"n_points": 8, "seed": 1}))
TOY_REPLICAS = Step("replicas.pseudodata", {"data": TOY}, {"replicas": 2, "seed": 2})  # an input only
REGRESSION = example(Step("replicas.train", {"data": TOY_REPLICAS}, {
    "features": ["x"], "hidden": [4], "activations": ["tanh", "linear"], **SMALL_NET}))
PREDICTED = example(Step("replicas.predict", {"model": REGRESSION, "data": TOY}))
example(Step("replicas.summary", {"data": PREDICTED}))
example(Step("replicas.hyperopt", {"data": TOY_REPLICAS}, {
    "op": "replicas.train", "space": {"optimiser.lr": {"low": 1e-3, "high": 0.1, "log": True}},
    "base": {"features": ["x"], "hidden": [4], "activations": ["tanh", "linear"], **SMALL_NET},
    "folds": {"k": 2}, "trials": 1, "startup_trials": 1, "replicas": 2}))
example(Step("pdf.compress", {"pdf": replica_set}, {"replicas": 3, "generations": 5, "random_trials": 4}))

SOLVER_NET = {"replicas": 2, "hidden": [4], "activations": ["tanh", "linear"], "epochs": 4,
              "validation_every": 2, "device": "cpu"}
example(Step("solve.equation", params={"equation": "ode1", "n_grid": 5, "n_collocation": 8, **SOLVER_NET}))
example(Step("solve.bounce", params={"potentials": [{"c2": 0.1, "c3": -0.4, "c4": 0.25}], "n_collocation": 16,
                                     "n_profile": 21, **SOLVER_NET}))

AMP_POINTS = example(Step("amp.sample", params={"n_points": 40, "chunk_points": 20, "seed": 1}))
AMP_MODEL = example(Step("amp.train", {"data": AMP_POINTS}, {
    "replicas": 2, "hidden": [4], "activations": ["tanh", "linear"], "batch_size": 8, **SMALL_NET}))
AMP_PREDICTED = example(Step("amp.predict", {"model": AMP_MODEL, "data": AMP_POINTS}))
example(Step("amp.calibration", {"data": AMP_PREDICTED}))
