"""PDF fit ops: LO DIS theory, closure truth and level-1 data, the replica fit and predictions.

The chain of a fit (recipes/pdf_closure.yaml, recipes/pdf_dis_fit.yaml): `pdf.fk_tables` adds LO
F2 FK tables to ingested NNPDF data; `pdf.toy_truth` and `pdf.level1` make closure data from the
Les Houches toy PDF; `replicas.pseudodata` draws the replicas; `pdf.fit` trains one network per
replica (batched) and stores the ensemble in models/; `pdf.fitted_set` writes the fitted PDF set
in the lake's PDF-set layout; `pdf.predict` convolves any set with FK tables (lazy over points);
`pdf.closure` computes the closure-test estimators of DOMAIN.md section 3.
recipes/pdf_theory_fit.yaml fits NNLO FK tables from `ingest nnpdf-fk` instead of `pdf.fk_tables`'
LO ones: they depend on the gluon, which pdf.fit then fits as a flavour normalised by the momentum
sum rule at every step (param gluon, kernels.pdf_fit), and the fitted set is labelled with their Q0.

PDF-set layout (shared with the LHAPDF ingest/export): per Q subgrid k a variable xf_{k}
(member, flavour, x_{k}, q_{k}), q in GeV, flavour PDG ids, attrs["lhapdf_info"] the .info keys.
"""

from __future__ import annotations

import json
from typing import Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field, model_validator

from ..bounds import GridNodes, Points, Seed, Widths
from ..bounds import Params as _Params
from ..errors import OpError, did_you_mean
from ..key_numbers import mark
from ..registry import StepContext, register_op
from . import needs
from .core import as_delayed, require_variables
from .ensembles import (
    REPLICA,
    checkpointed_training,
    history_length,
    lazy_ensemble,
    result_arrays,
    result_layout,
    weight_names,
)
from .pdf_chi2 import chi2_per_point
from .replicas import TrainingParams

POINT = "point"
X_GRID = "x_grid"
LHAPDF_FLAVOURS = (-3, -2, -1, 1, 2, 3, 21)  # = kernels.pdf_fk.FLAVOURS (kernels load lazily)
Q0 = float(np.sqrt(2.0))  # GeV: the Les Houches toy's input scale, Q0^2 = 2 GeV^2


class GridParams(_Params):
    """The x grid of FK tables and fitted sets (kernels.pdf_fk.x_grid); both must match."""

    x_min: float = Field(1e-3, gt=0, lt=0.1)
    n_x: GridNodes = Field(50, ge=8)


def _grid(params: GridParams) -> np.ndarray:
    from ..kernels.pdf_fk import x_grid

    return x_grid(params.n_x, params.x_min)


# -- theory -----------------------------------------------------------------------------------
def _fk(x, target, grid):
    from ..kernels.pdf_fk import TARGETS, f2_fk_table

    x, target = np.asarray(x, float), np.asarray(target, int)
    if np.any((target < 0) | (target >= len(TARGETS))):
        raise OpError(
            f"LO F2 tables exist for {', '.join(TARGETS)} only; {int(np.sum(target < 0))} "
            "points have another target (target_index -1)"
        )
    if x.min() < grid[0] or x.max() > 1:
        raise OpError(
            f"kinematics outside the grid: data x spans {x.min():.4g}..{x.max():.4g}, "
            f"the FK grid [{grid[0]:.4g}, 1]; lower x_min"
        )
    return f2_fk_table(x, target, grid)


@register_op("pdf.fk_tables", params=GridParams, memory=2.0)  # FK rows built per chunk of points
def fk_tables(params: GridParams, data: xr.Dataset) -> xr.Dataset:
    """LO F2 FK tables FK(point, x_grid, flavour) at the data's x and target, beside the data.

    obs = sum FK xf(grid): cubic Lagrange interpolation in ln x to each point is built in. No
    evolution: the PDF at Q0 serves every Q^2 (parton-model LO). Chunked like the data's points.
    """
    for name in ("x", "target_index"):
        if name not in data.variables or data[name].dims != (POINT,):
            raise OpError(
                f"pdf.fk_tables needs {name!r} over ({POINT!r},) (as `ingest nnpdf` writes); "
                f"found {data[name].dims if name in data.variables else 'nothing'}"
            )
    grid = _grid(params)
    x, target = (da.asarray(data[name].data) for name in ("x", "target_index"))
    target = target.rechunk(x.chunks)
    fk = da.map_blocks(
        _fk,
        x,
        target,
        grid,
        new_axis=[1, 2],
        dtype=float,
        chunks=(x.chunks[0], (grid.size,), (len(LHAPDF_FLAVOURS),)),
    )
    return data.assign(fk=((POINT, X_GRID, "flavour"), fk)).assign_coords(
        {X_GRID: grid, "flavour": list(LHAPDF_FLAVOURS)}
    )


class ScanParams(GridParams):
    target: Literal["proton", "deuteron"] = "proton"
    n_points: Points = Field(60, ge=2)
    x_range: tuple[float, float] = (1e-2, 0.9)


@register_op("pdf.x_scan", params=ScanParams, inputs=(), memory=2.0)  # a small in-memory grid
def x_scan(params: ScanParams) -> xr.Dataset:
    """Kinematics for curves: log-spaced x of one target, to plot F2(x) at Q0 of any set."""
    from ..kernels.pdf_fk import TARGETS

    low, high = params.x_range
    if not params.x_min <= low < high < 1:
        raise OpError(f"x_range must satisfy x_min={params.x_min} <= low < high < 1, found {params.x_range}")
    x = np.geomspace(low, high, params.n_points)
    return xr.Dataset(
        coords={"x": (POINT, x), "target_index": (POINT, np.full(x.size, TARGETS.index(params.target)))}
    )


def _set_dataset(
    xf: np.ndarray | da.Array, grid: np.ndarray, description: str, extra: dict, q0: float = Q0
) -> xr.Dataset:
    """A one-subgrid PDF set (engine.ingest.lhapdf_format layout): xf (member, flavour, x) repeated at
    4 Q knots from q0 to 100 GeV, since the set is not evolved (PDF at q0 at every Q); q0 is the
    FK tables' input scale (the toy's for LO, the theory card's for evolved tables)."""
    from ..ingest.lhapdf_format import pdfset_from_arrays

    q = np.geomspace(q0, 100.0, 4)
    values = da.broadcast_to(da.asarray(xf)[..., None], (*xf.shape, q.size))
    info = {
        "SetDesc": description,
        "NumMembers": xf.shape[0],
        "ErrorType": "replicas" if xf.shape[0] > 1 else "none",
        "XMax": 1.0,
        "OrderQCD": 0,
        "DataVersion": 1,
        **extra,
    }
    return pdfset_from_arrays([grid], [q], LHAPDF_FLAVOURS, [values], info)


@register_op("pdf.toy_truth", params=GridParams, inputs=(), memory=2.0)  # a small in-memory grid
def toy_truth(params: GridParams) -> xr.Dataset:
    """The Les Houches toy PDF at Q0^2 = 2 GeV^2 as a one-member PDF set (closure-test truth)."""
    from ..kernels.pdf_fk import les_houches_toy

    grid = _grid(params)
    xf = les_houches_toy(grid).T[None]
    return _set_dataset(xf, grid, "Les Houches toy PDF at Q0^2 = 2 GeV^2 (values repeated in Q)", {})


def _set_at_q0(pdf: xr.Dataset, fk: xr.Dataset, what: str) -> xr.DataArray:
    """xf (member, x_grid, flavour) of a set on the FK grid at its lowest Q (LO, no evolution)."""
    if "xf_0" not in pdf:
        raise OpError(f"input {what!r} is not a PDF set (no xf_0 variable); found {list(pdf.data_vars)}")
    grid = fk[X_GRID].values
    knots = pdf["x_0"].values
    if knots.shape != grid.shape or not np.allclose(knots, grid, rtol=1e-10):
        raise OpError(
            f"input {what!r} has x knots {knots.size} in [{knots.min():.4g}, {knots.max():.4g}] "
            f"but the FK tables were built on {grid.size} in [{grid.min():.4g}, 1]: give "
            "pdf.fk_tables the x_min and n_x of the set"
        )
    missing = sorted(set(LHAPDF_FLAVOURS) - set(pdf["flavour"].values.tolist()))
    if missing:
        raise OpError(f"input {what!r} lacks flavours {missing} (PDG ids) the FK tables need")
    xf = pdf["xf_0"].isel(q_0=0).sel(flavour=list(LHAPDF_FLAVOURS))
    return xf.rename({"x_0": X_GRID}).transpose("member", X_GRID, "flavour")


class Level1Params(_Params):
    seed: Seed = 0
    covariance: str = "covariance"


def _fluctuate(truth, covariance, seed):
    from ..kernels.replicas import checked_cholesky

    rng = np.random.default_rng([seed, 1])
    return truth + checked_cholesky(np.asarray(covariance, float)) @ rng.standard_normal(truth.size)


@register_op(
    "pdf.level1", params=Level1Params, inputs=("theory", "truth"), memory=needs.gathered(3.0)
)  # one draw from the Cholesky factor of the whole covariance
def level1(params: Level1Params, theory: xr.Dataset, truth: xr.Dataset) -> xr.Dataset:
    """Closure data: truth predictions plus one draw from the experimental covariance (seeded).

    `data` becomes the level-1 data; `truth_prediction` holds the noiseless truth and
    `data_measured` the real measurement it replaces.
    """
    require_variables(theory, ["fk", params.covariance])
    xf = _set_at_q0(truth, theory, "truth").isel(member=0)
    exact = xr.dot(theory["fk"], xf, dim=[X_GRID, "flavour"])
    data = dask.delayed(_fluctuate, pure=True)(
        as_delayed(exact.data), as_delayed(theory[params.covariance].data), params.seed
    )
    n = theory.sizes[POINT]
    return theory.assign(
        data=(POINT, da.from_delayed(data, (n,), float)), truth_prediction=exact, data_measured=theory["data"]
    )


def _t0_covariance(t0, data, uncorrelated, relative_uncorrelated, additive, multiplicative):
    """C = diag(u_t0^2) + A A^T + (M t0)(M t0)^T: every multiplicative uncertainty at the t0
    predictions, the uncorrelated ones too (u_t0^2 = u^2 - (r data)^2 + (r t0)^2 with r their
    relative size), as NNPDF's t0 covariance (validphys's, checked to 1e-9 in
    tests/benchmarks/bench_n3fit.py); statistical and additive ones stay absolute."""
    t0, data, relative = (np.asarray(a, float) for a in (t0, data, relative_uncorrelated))
    scaled = np.asarray(multiplicative) * t0[:, None]
    additive_part = np.clip(np.asarray(uncorrelated) ** 2 - (relative * data) ** 2, 0.0, None)
    return np.diag(additive_part + (relative * t0) ** 2) + additive @ additive.T + scaled @ scaled.T


@register_op(
    "pdf.t0_covariance", params=_Params, inputs=("theory", "pdf"), memory=needs.gathered(3.0)
)  # the whole covariance and its factors
def t0_covariance(params: _Params, theory: xr.Dataset, pdf: xr.Dataset) -> xr.Dataset:
    """The fit covariance with multiplicative systematics at theory predictions t0 (NNPDF's t0).

    With MULT taken at the data, a fit that cannot follow every point (here: LO without
    evolution against data spread in Q^2) lowers all predictions to shrink the normalisation
    errors' weight (d'Agostini bias; measured: a real BCDMS + SLAC fit came out 35% below the
    data, 4% above with t0). `covariance` becomes the t0 one; the data's stays as
    `covariance_experimental`. t0 = member 0 of `pdf` through the FK tables. Entries ingested
    before the uncorrelated MULT part was kept apart (no `sys_uncorrelated_multiplicative`) keep
    all their uncorrelated uncertainties at the data.
    """
    parts = ["uncorrelated", "sys_additive", "sys_multiplicative", "covariance"]
    require_variables(theory, ["fk", "data", *parts])
    xf = _set_at_q0(pdf, theory, "pdf").isel(member=0)
    t0 = xr.dot(theory["fk"], xf, dim=[X_GRID, "flavour"])
    relative = theory.get("sys_uncorrelated_multiplicative", xr.zeros_like(theory["data"]))
    covariance = dask.delayed(_t0_covariance, pure=True)(
        *(as_delayed(a.data) for a in (t0, theory["data"], theory["uncorrelated"], relative)),
        *(as_delayed(theory[name].data) for name in parts[1:3]),
    )
    n = theory.sizes[POINT]
    return theory.assign(
        covariance=((POINT, f"{POINT}_b"), da.from_delayed(covariance, (n, n), float)),
        covariance_experimental=theory["covariance"],
        t0_prediction=t0,
    )


# -- fit --------------------------------------------------------------------------------------
class PositivityParams(_Params):
    initial: float = Field(100.0, ge=0, description="penalty multiplier lambda at epoch 0")
    growth: float = Field(1.3, ge=1, description="lambda multiplies by this every 100 epochs")
    maximum: float = Field(1e4, gt=0)


class FitParams(TrainingParams, GridParams):
    basis: list[str] = Field(
        ["Sigma", "T3"],
        description="fitted functions: from Sigma, T3, T8 (evolution basis), or the sea basis "
        "V, V3, ubar, dbar on tables that see q - qbar (valence; x ubar, x dbar positive by construction)",
    )
    hidden: Widths = Field([25, 20], description="hidden layer widths (NNPDF4.0: 25, 20)")
    positivity: PositivityParams = PositivityParams()
    preprocessing: Literal["per_replica", "shared"] = Field(
        "per_replica",
        description="per_replica: exponents alpha, beta drawn per replica (NNPDF); "
        "shared: one draw for all quark functions (a fitted gluon keeps its own per replica), whose "
        "bands are calibrated (kernels.pdf_basis.draw_preprocessing)",
    )
    gluon: Literal["auto", "fitted", "shape"] = Field(
        "auto",
        description="fitted: g is a fitted flavour (its own network output and exponents, "
        "A_g from the momentum sum rule at every step); shape: x^-0.1 (1 - x)^5 times A_g; auto: "
        "fitted on evolved tables (fk attrs q0_gev, as `ingest nnpdf-fk` writes), none on LO ones",
    )
    target: str = "pseudodata"
    mask: str = "training_mask"
    covariance: str = "covariance"

    @model_validator(mode="after")
    def _basis(self) -> FitParams:
        from ..kernels.pdf_basis import check_basis_before_tables

        if "g" in self.basis:
            raise ValueError(
                f"basis lists the quark functions only, found {self.basis}: the gluon is "
                "fitted whenever the FK tables depend on it (param gluon: auto or fitted)"
            )
        try:  # what no F2 data can constrain; the targets present and V, V3 are checked at run time
            check_basis_before_tables(tuple(self.basis), ("proton", "deuteron"))
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return self


def fits_gluon(params: FitParams, fk_attrs: dict) -> bool:
    """Whether the fit's networks parametrise the gluon (metadata only: the op stays lazy)."""
    return params.gluon == "fitted" or (params.gluon == "auto" and "q0_gev" in fk_attrs)


def training_config(params: FitParams, fitted_gluon: bool = False):
    """The fit kernel's settings from the op's params (pdf.fit, replicas.hyperopt); the basis ends
    in g when the gluon is fitted (`fits_gluon`)."""
    from ..kernels.optim import OptimiserConfig
    from ..kernels.pdf_fit import PdfFitConfig, PositivityConfig, with_gluon
    from ..kernels.train import StoppingConfig

    basis = with_gluon(tuple(params.basis)) if fitted_gluon else tuple(params.basis)
    return PdfFitConfig(
        basis,
        tuple(params.hidden),
        tuple(params.activations),
        params.epochs,
        OptimiserConfig(**params.optimiser.model_dump()),
        StoppingConfig(**params.stopping.model_dump()),
        PositivityConfig(**params.positivity.model_dump()),
        params.validation_every,
        params.seed,
        params.device,
        params.checkpoint_every,
        params.preprocessing,
    )


def _fit(
    fk,
    target_index,
    pseudodata,
    mask,
    covariance,
    params: FitParams,
    fitted_gluon: bool,
    context: StepContext,
):
    from ..kernels.pdf_fit import (
        POSITIVITY_TOLERANCE,
        check_basis,
        check_gluon,
        fit_pdf,
        fits_valence,
        gluon_enters,
        gluon_normalisation,
        momentum_gluon_normalisation,
        targets_of,
        valence_normalisation,
    )

    config = training_config(params, fitted_gluon)
    fk = np.asarray(fk)
    try:
        check_basis(config.basis, targets_of(target_index), fk)
        check_gluon(config.basis, fk)
        if params.gluon == "auto" and not fitted_gluon and gluon_enters(fk):
            raise ValueError(
                "the FK tables depend on the gluon but state no input scale (fk attrs "
                "q0_gev, as `ingest nnpdf-fk` writes): set gluon: fitted, or shape"
            )
    except ValueError as exc:
        raise OpError(f"step {context.step_id!r}: {exc}") from None
    # the gluon's A_g as the training imposed it: at every step when it enters the predictions
    normalise = momentum_gluon_normalisation if gluon_enters(fk) else gluon_normalisation
    penalty = {}

    def fit(**hooks):
        result, penalty["value"] = fit_pdf(
            fk,
            _grid(params),
            np.asarray(pseudodata),
            np.asarray(mask),
            np.asarray(covariance),
            config,
            **hooks,
        )
        return result

    result = checkpointed_training(context, params.epochs, params.validation_every, fit)
    arrays = result_arrays(result, history_length(params.epochs, params.validation_every))
    valence = fits_valence(config.basis)
    return {
        **arrays,
        "positivity_penalty": penalty["value"],
        "positivity_ok": penalty["value"] < POSITIVITY_TOLERANCE,
        "gluon_norm": normalise(result.weights, result.architecture, config.basis),
        **({"valence_norm": valence_normalisation(result.weights, result.architecture, config.basis)}
           if valence else {}),
    }


@register_op(
    "pdf.fit",
    params=FitParams,
    inputs=("data", "theory"),
    wants_context=True,
    version="1",
    memory=needs.TorchNeed(needs.pdf_fit_need),
)
def fit(params: FitParams, data: xr.Dataset, theory: xr.Dataset, context: StepContext) -> xr.Dataset:
    """NNPDF-style replica fit: NN(x, ln x) x^(1-alpha) (1-x)^beta per fitted basis function.

    data: replicas.pseudodata output (pseudodata, training_mask, covariance); theory: pdf.fk_tables
    output on the same points, or `ingest nnpdf-fk` tables (NNLO F2 with evolution from the theory's
    Q0, fk attrs q0_gev: the fitted PDF is at that Q0). Unfitted functions follow kernels.pdf_fit's
    stated assumptions. The gluon (param gluon): on tables that depend on it, a fitted flavour
    (the networks' last output, basis attrs ending in g) normalised by the momentum sum rule
    inside every training step; on LO tables the shape x^-0.1 (1 - x)^5 normalised after the fit
    (`gluon_norm`: A_g per replica). The sea basis V, V3, ubar, dbar (tables that see q - qbar:
    charged current, xF3) fits the valence normalised by int V = 3, int V3 = 1 at every step
    (`valence_norm`: A_V, A_V3 per replica), V8 = V, and the antiquarks positive by construction.
    Positivity of x(q + qbar) (and x g when fitted; x u, x d with valence) is a growing penalty.
    """
    from ..kernels.pdf_basis import VALENCE, fit_architecture, fits_valence, with_gluon

    require_variables(data, [params.target, params.mask, params.covariance])
    require_variables(theory, ["fk"])
    target = data[params.target]
    if target.dims != (REPLICA, POINT) or theory.sizes[POINT] != target.sizes[POINT]:
        raise OpError(
            f"data {params.target!r} must be ({REPLICA}, {POINT}) over the theory's "
            f"{theory.sizes[POINT]} points; found {dict(target.sizes)}"
        )
    if theory.sizes[X_GRID] != params.n_x or not np.isclose(theory[X_GRID].values[0], params.x_min):
        raise OpError(
            f"the FK tables' grid ({theory.sizes[X_GRID]} points from "
            f"{theory[X_GRID].values[0]:.4g}) differs from this fit's x_min={params.x_min}, "
            f"n_x={params.n_x}: give both steps the same values"
        )
    r = target.sizes[REPLICA]
    fitted_gluon = fits_gluon(params, theory["fk"].attrs)
    basis = with_gluon(tuple(params.basis)) if fitted_gluon else tuple(params.basis)  # no torch
    nb = len(basis)
    try:
        architecture = fit_architecture(basis, tuple(params.hidden), tuple(params.activations), params.seed)
    except ValueError as exc:  # an unknown activation
        raise OpError(str(exc)) from None
    trained = dask.delayed(_fit, pure=True)(
        as_delayed(theory["fk"].data),
        as_delayed(theory["target_index"].data),
        as_delayed(target.data),
        as_delayed(data[params.mask].data),
        as_delayed(data[params.covariance].data),
        params,
        fitted_gluon,
        context,
    )
    layout = result_layout(architecture, r, history_length(params.epochs, params.validation_every))
    for name in ("param_alpha", "param_beta"):
        layout[name] = ((REPLICA, "basis"), (r, nb), np.float32)
    layout["positivity_penalty"] = ((REPLICA,), (r,), float)
    layout["positivity_ok"] = ((REPLICA,), (r,), bool)
    layout["gluon_norm"] = ((REPLICA,), (r,), float)
    if fits_valence(basis):  # A_V, A_V3: the number sum rules' normalisations
        layout["valence_norm"] = ((REPLICA, "valence"), (r, len(VALENCE)), float)
    q0 = float(theory["fk"].attrs.get("q0_gev", Q0))  # evolved tables state their input scale
    model = lazy_ensemble(
        trained,
        layout,
        architecture,
        {
            "kind": "PDF replica ensemble",
            "basis": list(basis),
            "x_min": params.x_min,
            "n_x": params.n_x,
            "epochs": params.epochs,
            "q0_gev": q0,
        },
    )
    if fits_valence(basis):
        model = model.assign_coords(valence=list(VALENCE))
    mark(model["kept"], "fraction_true")  # the run summary's line (engine/key_numbers.py)
    mark(model["chi2_validation"], "median")
    mark(model["positivity_ok"], "count_false", label="replicas failing positivity")
    return model


def _fitted_values(gluon_norm, valence_norm, keep, basis, grid, **arrays):
    from ..kernels.pdf_fit import basis_on_grid, flavours_from_basis

    weights = {k: np.asarray(v) for k, v in arrays.items() if k != "architecture"}
    values = basis_on_grid(weights, json.loads(arrays["architecture"]), grid)
    valence = None if valence_norm is None else np.asarray(valence_norm)
    xf = flavours_from_basis(values, grid, tuple(basis), np.asarray(gluon_norm), valence)
    keep = np.asarray(keep, bool)
    if not keep.any():
        raise OpError("no replica passed the post-fit selection and positivity: nothing to average")
    return np.concatenate([xf[keep].mean(0, keepdims=True), xf]).transpose(0, 2, 1)


@register_op(
    "pdf.fitted_set", params=_Params, inputs=("model",), memory=needs.TorchNeed(3.0)
)  # every replica evaluated on the x grid
def fitted_set(params: _Params, model: xr.Dataset) -> xr.Dataset:
    """The fitted PDF set: member 0 = average of the kept replicas, member k = replica k - 1.

    `kept` (member) flags the replicas that passed post-fit selection and positivity (member 0
    is always True); an LHAPDF export should keep only those.
    """
    if model.attrs.get("kind") != "PDF replica ensemble":
        raise OpError("input 'model' is not a pdf.fit ensemble (attrs kind != 'PDF replica ensemble')")
    grid = _grid(GridParams(x_min=model.attrs["x_min"], n_x=model.attrs["n_x"]))
    keep = model["kept"] & model["positivity_ok"]
    r = model.sizes[REPLICA]
    values = dask.delayed(_fitted_values, pure=True)(
        as_delayed(model["gluon_norm"].data),
        as_delayed(model["valence_norm"].data) if "valence_norm" in model else None,
        as_delayed(keep.data),
        list(model.attrs["basis"]),
        grid,
        architecture=model.attrs["architecture"],
        **{n: as_delayed(model[n].data) for n in weight_names(model)},
    )
    xf = da.from_delayed(values, (r + 1, len(LHAPDF_FLAVOURS), grid.size), float)
    q0 = float(model.attrs.get("q0_gev", Q0))  # ensembles stored before q0_gev: the LO toy's Q0
    result = _set_dataset(
        xf,
        grid,
        f"Replica fit of F2 (basis {', '.join(model.attrs['basis'])}), "
        f"PDF at Q0 = {q0:.4g} GeV repeated in Q (not evolved)",
        {"FitBasis": list(model.attrs["basis"])},
        q0,
    )
    # one chunk along member, like xf: a dataset's chunks must agree per dim (`plan` reads them)
    kept = da.concatenate([da.ones(1, dtype=bool), keep.data]).rechunk(-1, method="tasks")
    return result.assign(kept=("member", kept))


# -- predictions and closure -----------------------------------------------------------------
@register_op(
    "pdf.predict", params=_Params, inputs=("pdf", "theory"), optional_inputs=("truth",), memory=3.0
)  # FK rows times every member per chunk of points
def predict(
    params: _Params, pdf: xr.Dataset, theory: xr.Dataset, truth: xr.Dataset | None = None
) -> xr.Dataset:
    """obs(replica, point) = sum over x, f of FK(point, x, f) xf(replica, x, f), lazy over points.

    Replicas are the set's members 1..N (member 0, the central value, becomes `central`); a
    one-member set gives one replica. `truth` (a set) adds its prediction as `truth`.
    """
    require_variables(theory, ["fk"])
    xf = _set_at_q0(pdf, theory, "pdf")
    members = xf.sizes["member"]
    replicas = xf.isel(member=slice(1, None)) if members > 1 else xf
    obs = da.einsum("nxf,rxf->rn", theory["fk"].data, replicas.data.rechunk(-1))
    r = replicas.sizes["member"]
    if "kept" in pdf and members > 1:
        kept = pdf["kept"].isel(member=slice(1, None)).data
    else:
        kept = da.ones(r, dtype=bool)
    coords = {
        POINT: np.arange(theory.sizes[POINT]),
        REPLICA: np.arange(r),
        **{k: v for k, v in theory.coords.items() if v.dims == (POINT,)},
    }
    central = da.einsum("nxf,xf->n", theory["fk"].data, xf.isel(member=0).data)
    result = xr.Dataset(
        {"prediction": ((REPLICA, POINT), obs), "kept": (REPLICA, kept), "central": (POINT, central)},
        coords=coords,
    )
    passthrough = {k: v for k, v in theory.data_vars.items() if set(v.dims) <= {POINT, f"{POINT}_b"}}
    result = result.assign(passthrough)
    result.attrs = {k: v for k, v in theory.attrs.items() if k in ("datasets", "dataset_points")}
    if truth is not None:
        exact = _set_at_q0(truth, theory, "truth").isel(member=0)
        result["truth"] = (POINT, da.einsum("nxf,xf->n", theory["fk"].data, exact.data))
    return result


class ClosureParams(_Params):
    covariance: str = "covariance"


def _closure(prediction, kept, truth, data, covariance):
    kept = np.asarray(kept, bool)
    chosen = np.asarray(prediction)[kept]
    central = chosen.mean(0)
    pulls = (central - truth) / chosen.std(0, ddof=1)
    return np.array(
        [
            chi2_per_point(central, truth, covariance),
            chi2_per_point(central, data, covariance),
            float(np.sqrt(np.mean(pulls**2))),
            float(kept.mean()),
            float(kept.sum()),
        ]
    )


CLOSURE_ESTIMATORS = ("chi2_central_truth", "chi2_central_data", "rms_pull", "kept_fraction", "replicas_kept")


@register_op(
    "pdf.closure", params=ClosureParams, memory=needs.gathered(3.0)
)  # estimators over every point at once
def closure(params: ClosureParams, data: xr.Dataset) -> xr.Dataset:
    """Closure estimators (DOMAIN.md 3): chi2/n of the central prediction vs truth and vs level-1
    data (experimental covariance), RMS pull (mean - truth) / std over points, kept fraction.
    """
    require_variables(data, ["prediction", "kept", "truth", "data", params.covariance])
    values = dask.delayed(_closure, pure=True)(
        *(as_delayed(data[n].data) for n in ("prediction", "kept", "truth", "data", params.covariance))
    )
    arrays = da.from_delayed(values, (len(CLOSURE_ESTIMATORS),), float)
    result = xr.Dataset({name: ((), arrays[i]) for i, name in enumerate(CLOSURE_ESTIMATORS)})
    for name in ("chi2_central_truth", "chi2_central_data", "rms_pull", "kept_fraction"):
        mark(result[name], "value")  # the closure in the run summary (engine/key_numbers.py)
    return result


class DatasetViewParams(_Params):
    dataset: str = Field(description="dataset name as ingested (SET_OBSERVABLE, or a unique prefix)")
    covariance: str = "covariance"


def _dataset_slice(data: xr.Dataset, name: str) -> slice:
    """The contiguous points of one ingested dataset, from the ingest's attrs (no computing)."""
    names, counts = data.attrs.get("datasets"), data.attrs.get("dataset_points")
    if not names or counts is None:
        raise OpError(
            "the data carry no 'datasets'/'dataset_points' attributes (written by "
            "`ingest nnpdf`): cannot tell which points belong to which dataset"
        )
    matches = [i for i, full in enumerate(names) if full == name or full.startswith(name)]
    if len(matches) != 1:
        raise OpError(
            f"dataset {name!r} {'is ambiguous' if matches else 'is not in the data'}"
            f"{did_you_mean(name, names)}; datasets: {', '.join(names)}"
        )
    start = int(np.sum(counts[: matches[0]]))
    return slice(start, start + int(counts[matches[0]]))


@register_op(
    "pdf.dataset_view", params=DatasetViewParams, memory=1.5
)  # slicing: the input chunk and the selected copy
def dataset_view(params: DatasetViewParams, data: xr.Dataset) -> xr.Dataset:
    """One dataset's points of a pdf.predict output, for data-vs-theory pictures.

    Adds `data_low`/`data_high`: the data -+ the square root of the covariance diagonal (total
    experimental uncertainty).
    """
    require_variables(data, ["data", params.covariance])
    points = _dataset_slice(data, params.dataset)
    sigma = np.sqrt(xr.DataArray(da.diagonal(data[params.covariance].data), dims=(POINT,)))
    square = [k for k, v in data.data_vars.items() if f"{POINT}_b" in v.dims]
    view = data.drop_vars(square).assign(data_low=data["data"] - sigma, data_high=data["data"] + sigma)
    return view.isel({POINT: points})
