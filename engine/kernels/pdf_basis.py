"""The fit basis of the NNPDF-style PDF fit, in numpy only (no torch).

Which evolution-basis functions a fit may parametrise, how they rotate to flavours, which ones LO
F2 data on given targets or given FK tables can determine (`check_basis`), the preprocessing
exponents drawn per replica, and the description of the fit's networks (`fit_architecture`).

Valence: the sea basis (below) fits V and V3 when the FK tables see q - qbar (charged current,
Z exchange's xF3). V8 is assumed equal to V (s - sbar = 0: no strange valence), so V = u- + d-
and V3 = u- - d- with q- = q - qbar; the number sum rules int V = 3, int V3 = 1 (int u- = 2,
int d- = 1) fix their normalisations (kernels.pdf_fit).

The sea basis: V, V3, ubar, dbar (and g) fits the antiquarks x ubar, x dbar themselves, positive
by construction (softplus of their network outputs, `positive_outputs`), with x q = x q- + x qbar
(s = sbar = 0, as T8 = Sigma and V8 = V say in the evolution basis). Why: with Sigma, T3, V, V3
the antiquarks are differences, qbar = (q+ - q-) / 2, kept positive by a penalty; where the sea
vanishes (large x) that penalty pushes every replica whose V fluctuates up back down, and the
number sum rules move what V loses there to small x: the charged-current closure's V band sat 2x
the truth at x = 2e-3 and 0.8x at 0.2-0.5, and 14% of replicas failed. Fitted directly, the sea
cannot go negative, V and V3 are free wherever the data put them, and the same closure keeps every
replica with chi2/n ~ 1 (README, valence).

Why its own module: `replicalake validate` and `plan` check a fit's basis and declare its
ensemble before anything trains, and must not import torch for it; kernels.pdf_fit (the networks,
the loss and the training, re-exporting these names) builds its model from the same constants.
"""

from __future__ import annotations

import numpy as np

from .architecture import architecture
from .pdf_fk import FLAVOURS, TARGETS, f2_charges

EVOLUTION_BASIS = ("Sigma", "g", "V", "V3", "V8", "T3", "T8")
# the sea basis's antiquarks (x ubar, x dbar at Q0), fitted with V and V3 in place of Sigma and T3
SEA = ("ubar", "dbar")
FIT_FUNCTIONS = EVOLUTION_BASIS + SEA
# (alpha range, beta range) per fittable function: x f ~ x^(1 - alpha) at small x, (1 - x)^beta
PREPROCESSING = {
    "Sigma": ((1.05, 1.2), (1.5, 3.5)),
    "T3": ((-0.5, 1.0), (1.5, 3.5)),
    "T8": ((0.5, 1.1), (1.5, 4.0)),
    "g": ((0.8, 1.2), (2.8, 5.7)),
    # NNPDF4.0 NNLO (n3fit/runcards/reproduce_nnpdf40/NNPDF40_nnlo_as_01180_1000.yml, fitting.basis
    # v and v3 smallx / largex, NNPDF/nnpdf commit 2357686f); V's small-x range there, [0.457,
    # 0.7326], is fitted to real data and excludes the Les Houches toy's 0.2 (x u_v, x d_v ~ x^0.8):
    # extended down to 0.1 so that it holds both (V3's NNPDF range already does). With [0.457,
    # 0.7326] the toy closure's V band missed the truth (RMS pull 9-14 of 1.25 calibrated, README)
    "V": ((0.1, 0.7326), (1.56, 3.431)),
    "V3": ((0.1462, 0.4061), (1.745, 3.452)),
    # the sea: Sigma's small-x range (the sea is what Sigma is made of there); at large x the quark
    # counting rule's (1 - x)^7 for antiquarks (four spectators), +-2
    "ubar": ((1.05, 1.2), (5.0, 9.0)),
    "dbar": ((1.05, 1.2), (5.0, 9.0)),
}
# the functions F2 can see (q + qbar combinations); the gluon is fitted only on tables that depend
# on it (evolved F2: `with_gluon`), never chosen by a basis: no LO F2 constrains it
QUARK_FUNCTIONS = ("Sigma", "T3", "T8")
# q - qbar combinations, fitted together on tables that see them; their number sum rules: int dx
VALENCE_SUM_RULES = {"V": 3.0, "V3": 1.0}
VALENCE = tuple(VALENCE_SUM_RULES)
ROUND_OFF = 1e-10  # relative: SLAC F2 rows of NNLO tables differ q vs qbar by < 1e-15, HERA NC's > 3e-6
GLUON = "g"
# drawn per replica even with preprocessing="shared": functions whose form the data fix only
# loosely (draw_preprocessing says why)
OWN_DRAW = (GLUON, "V")
GLUON_SHAPE_EXPONENTS = (-0.1, 5.0)  # x g ~ x^a (1 - x)^b, the Les Houches gluon's shape


def _rotation() -> np.ndarray:
    """(flavour, basis) matrix: x f_flavour = sum_b R[f, b] x f_b (FLAVOURS, EVOLUTION_BASIS)."""
    # q+ = q + qbar and q- = q - qbar of u, d, s from the evolution basis
    plus = {
        "u": {"Sigma": 1 / 3, "T3": 1 / 2, "T8": 1 / 6},
        "d": {"Sigma": 1 / 3, "T3": -1 / 2, "T8": 1 / 6},
        "s": {"Sigma": 1 / 3, "T8": -1 / 3},
    }
    minus = {
        "u": {"V": 1 / 3, "V3": 1 / 2, "V8": 1 / 6},
        "d": {"V": 1 / 3, "V3": -1 / 2, "V8": 1 / 6},
        "s": {"V": 1 / 3, "V8": -1 / 3},
    }
    names = {1: "d", 2: "u", 3: "s"}
    rotation = np.zeros((len(FLAVOURS), len(EVOLUTION_BASIS)))
    for i, pid in enumerate(FLAVOURS):
        if pid == 21:
            rotation[i, EVOLUTION_BASIS.index("g")] = 1.0
            continue
        sign = 1.0 if pid > 0 else -1.0  # q = (q+ + q-) / 2, qbar = (q+ - q-) / 2
        for part, factor in ((plus, 0.5), (minus, 0.5 * sign)):
            for name, c in part[names[abs(pid)]].items():
                rotation[i, EVOLUTION_BASIS.index(name)] += factor * c
    return rotation


ROTATION = _rotation()


def fit_rotation(basis: tuple[str, ...]) -> np.ndarray:
    """(flavour, fitted) matrix with the assumptions for unfitted functions folded in."""
    if fits_sea(basis):
        return _sea_rotation(basis)
    effective = ROTATION.copy()
    if "T8" not in basis:  # T8 = Sigma: no strange sea
        effective[:, EVOLUTION_BASIS.index("Sigma")] += effective[:, EVOLUTION_BASIS.index("T8")]
    if "V" in basis and "V8" not in basis:  # V8 = V: s - sbar = 0
        effective[:, EVOLUTION_BASIS.index("V")] += effective[:, EVOLUTION_BASIS.index("V8")]
    return effective[:, [EVOLUTION_BASIS.index(b) for b in basis]]


def _sea_rotation(basis: tuple[str, ...]) -> np.ndarray:
    """(flavour, fitted) matrix of the sea basis: x u = x u- + x ubar, x d = x d- + x dbar with
    u- = (V + V3) / 2, d- = (V - V3) / 2, the antiquarks as fitted, no strange, g as fitted."""
    rotation = np.zeros((len(FLAVOURS), len(basis)))
    column = {name: j for j, name in enumerate(basis)}
    for quark, antiquark, v3_sign in ((2, "ubar", 1.0), (1, "dbar", -1.0)):
        if "V" in column:
            rotation[FLAVOURS.index(quark), column["V"]] = 0.5
            rotation[FLAVOURS.index(quark), column["V3"]] = 0.5 * v3_sign
        for pid in (quark, -quark):
            rotation[FLAVOURS.index(pid), column[antiquark]] = 1.0
    if GLUON in column:
        rotation[FLAVOURS.index(21), column[GLUON]] = 1.0
    return rotation


def fits_sea(basis: tuple[str, ...]) -> bool:
    """Whether the basis is the sea basis (fits x ubar, x dbar themselves)."""
    return any(name in SEA for name in basis)


def positive_outputs(basis: tuple[str, ...]) -> list[int]:
    """The fitted functions positive by construction: the sea basis's antiquarks."""
    return [j for j, name in enumerate(basis) if name in SEA]


def with_gluon(basis: tuple[str, ...]) -> tuple[str, ...]:
    """The functions a fit on gluon-dependent tables parametrises: the quark basis, then g."""
    return (*basis, GLUON)


def check_basis(basis: tuple[str, ...], targets: tuple[str, ...], fk: np.ndarray | None = None) -> None:
    """Raise ValueError unless the data determine every fitted function.

    The quark functions: LO F2 on `targets` fix rank(M) combinations, M[t, b] = LO F2 charges of
    target t . rotation column b; each fitted function needs its own. A trailing g (`with_gluon`)
    is the gluon of evolved tables: the trainer checks that the tables depend on it. V and V3
    never enter F2 by photon exchange (it sees q + qbar only, at any order): with FK tables `fk`
    (n, x, FLAVOURS) they are checked on the tables themselves (`check_valence`), else refused.
    """
    basis = _checked_names(basis)
    if fits_valence(basis) and fk is None:
        raise ValueError(
            "V, V3 are fixed only by data that see q - qbar (charged current, xF3), and LO F2 "
            f"sees q + qbar only: fit a basis from {', '.join(QUARK_FUNCTIONS)}, or the sea basis "
            "on FK tables that see q - qbar"
        )
    if fits_valence(basis):
        check_valence(fk)
        basis = without_valence(basis)
    if basis:
        _check_lo_f2(basis, targets)


def check_basis_before_tables(basis: tuple[str, ...], targets: tuple[str, ...]) -> None:
    """What a fit's params can be checked for before its tables exist (validate, plan): a basis
    with V and V3 leaves them to the tables (`check_valence` at run time), the rest as LO F2."""
    basis = _checked_names(basis)
    if fits_valence(basis) and without_valence(basis):
        basis = without_valence(basis)
    _check_lo_f2(basis, targets)


def _checked_names(basis: tuple[str, ...]) -> tuple[str, ...]:
    """The quark functions of a basis of distinct known names (a trailing g dropped: it is fitted
    from evolved tables, not from LO charges); the sea basis must be whole, V, V3, ubar, dbar."""
    unknown = [b for b in basis if b not in FIT_FUNCTIONS]
    if unknown or not basis or len(set(basis)) != len(basis):
        raise ValueError(
            f"fit basis must list distinct names from {', '.join(FIT_FUNCTIONS)}; found {list(basis)}"
        )
    quarks = tuple(basis[:-1]) if len(basis) > 1 and basis[-1] == GLUON else tuple(basis)
    if (fits_sea(quarks) or fits_valence(quarks)) and set(quarks) != {*VALENCE, *SEA}:
        raise ValueError(
            f"valence is fitted in the sea basis {', '.join((*VALENCE, *SEA))} (x ubar, x dbar "
            "fitted, positive by construction, in place of Sigma and T3; beside Sigma and T3 the "
            f"antiquarks' positivity biased V: module docstring); found {list(basis)}"
        )
    return quarks


def fits_valence(basis: tuple[str, ...]) -> bool:
    """Whether the basis fits the valence pair V, V3 (alone, either is refused as LO F2-blind:
    the two number sum rules fix u - ubar and d - dbar, two functions)."""
    return set(VALENCE) <= set(basis)


def without_valence(basis: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(b for b in basis if b not in VALENCE)


def _check_lo_f2(basis: tuple[str, ...], targets: tuple[str, ...]) -> None:
    """Refuse quark functions LO F2 on `targets` cannot see, or more than they fix."""
    matrix = np.stack([f2_charges(t) for t in targets]) @ fit_rotation(basis)
    blind = [b for b, column in zip(basis, matrix.T) if not np.any(np.abs(column) > 1e-12)]
    if blind:
        raise ValueError(
            f"{', '.join(blind)} do(es) not enter LO F2, so the data cannot constrain "
            f"it; fit a basis from {', '.join(QUARK_FUNCTIONS)} (or V and V3 in the sea basis "
            f"{', '.join((*VALENCE, *SEA))}, on FK tables that see q - qbar: charged current, xF3)"
        )
    rank = np.linalg.matrix_rank(matrix)
    if rank < len(basis):
        raise ValueError(
            f"LO F2 data on {', '.join(targets)} determine {rank} combination(s) of PDFs, "
            f"but the fit basis {list(basis)} has {len(basis)} functions; fit "
            f"{rank} of them (e.g. {list(_constrained(targets))})"
        )


def check_valence(fk: np.ndarray) -> None:
    """Raise ValueError unless FK tables (n, x, FLAVOURS) see V and V3 apart.

    A prediction depends on q - qbar through (FK_q - FK_qbar) / 2; photon-exchange F2 has equal
    columns (to round-off: ROUND_OFF of the table's largest entry), charged current and xF3 do
    not. Each function must enter, and the two must not enter only as one combination.
    """
    fk = np.asarray(fk, float)
    seen = np.einsum("nxf,fb->nxb", fk, fit_rotation(VALENCE)).reshape(-1, len(VALENCE))
    size = np.abs(seen).max(0)
    blind = [b for b, s in zip(VALENCE, size) if not s > ROUND_OFF * np.abs(fk).max()]
    if blind:
        raise ValueError(
            f"{', '.join(blind)} do(es) not enter these FK tables (their q and qbar columns agree "
            "to round-off: F2 by photon exchange sees q + qbar only), so the data cannot "
            f"constrain it; fit a basis from {', '.join(QUARK_FUNCTIONS)}, or add data that see "
            "q - qbar (charged current, xF3)"
        )
    singular = np.linalg.svd(seen / size, compute_uv=False)
    if singular[-1] < 1e-8 * singular[0]:
        raise ValueError(
            "these FK tables see one combination of V and V3 only (e.g. one charged-current "
            "channel at one y); add data that separate u - ubar from d - dbar, or fit neither"
        )


def _constrained(targets: tuple[str, ...]) -> tuple[str, ...]:
    """A basis F2 data on these targets determine: p and d fix Sigma and T3, one target Sigma."""
    return ("Sigma", "T3") if len(set(targets)) > 1 else ("Sigma",)


def targets_of(target_index: np.ndarray) -> tuple[str, ...]:
    return tuple(TARGETS[i] for i in sorted(set(np.asarray(target_index, int).tolist())))


def draw_preprocessing(
    basis: tuple[str, ...], replica_ids: np.ndarray, seed: int, shared: bool = False
) -> dict[str, np.ndarray]:
    """alpha, beta (R, n_basis) drawn uniformly in each function's range, seeded per replica.

    shared=True gives every replica the draw of replica 0 for the quark functions. Why: exponents
    drawn per replica (NNPDF's way of sampling the functional form) add a scatter between replicas
    that no data fluctuation causes and that the replica mean averages away, so the band overstates
    the mean's error where data constrain the PDF: the pooled closure measured sqrt(bias /
    variance) 0.78 with them and 1.09 with one draw for all, where 1.05 is calibrated (README, PDF
    fits). A fitted gluon keeps its own draw per replica even then: F2 fixes it only through its
    Q^2 slope and the momentum sum rule, so its functional form is a real part of its error; on the
    evolved-toy closure (tests/ops/test_pdf_nnlo_fit.py, 8 seeds x 16 replicas, 4000 epochs) the
    gluon's RMS pull was 1.63 with one draw for all and 1.01 with its own per replica (1.06 at
    8000 epochs, where F2 is calibrated too), calibrated 1.107. V too: CC data fix it at small x
    only through small differences of q and qbar, and its small-x form moves int V = 3 between
    small and large x. V3 not: its own draw overstated its band. On the sea basis's CC toy closure
    (tests/ops/test_pdf_valence.py, 8 seeds x 16 replicas, 8000 epochs; calibrated coverage 0.607,
    RMS pull 1.107) V, V3 both drawn per replica: V 0.593 / 1.116, V3 0.821 / 0.585; both shared:
    V 0.379 / 2.234, V3 0.654 / 1.050; V's own and V3 shared: V 0.582 / 1.120, V3 0.629 / 0.891.
    """
    alpha = np.empty((len(replica_ids), len(basis)))
    beta = np.empty_like(alpha)
    for k, replica in enumerate(replica_ids):
        rngs = {
            own: np.random.default_rng([seed, 0 if shared and not own else int(replica), 7])
            for own in (False, True)
        }  # own: the replica's own stream (every draw unless shared)
        for j, name in enumerate(basis):
            (a_low, a_high), (b_low, b_high) = PREPROCESSING[name]
            for own, rng in rngs.items():  # both streams advance alike, so draws match across modes
                if own == (not shared or name in OWN_DRAW):
                    alpha[k, j], beta[k, j] = rng.uniform(a_low, a_high), rng.uniform(b_low, b_high)
                else:
                    rng.uniform(a_low, a_high), rng.uniform(b_low, b_high)
    return {"alpha": alpha, "beta": beta}


# The fit's networks: NN(x, ln x) per fitted function, times x^(1 - alpha) (1 - x)^beta per replica.
FIT_INPUT_TRANSFORM = "x_logx"
FIT_OUTPUT_TRANSFORM = "pdf_preprocessing"
FIT_REPLICA_PARAMS = ("alpha", "beta")


def fit_sizes(basis: tuple[str, ...], hidden: tuple[int, ...]) -> list[int]:
    """Layer widths of a fit's networks: (x, ln x) in, one output per fitted function."""
    return [2, *hidden, len(basis)]


def fit_architecture(
    basis: tuple[str, ...], hidden: tuple[int, ...], activations: tuple[str, ...], seed: int
) -> dict:
    """The architecture kernels.pdf_fit.build_model's ensemble has, without building it."""
    return architecture(
        fit_sizes(basis, hidden),
        list(activations),
        seed,
        input_transform=FIT_INPUT_TRANSFORM,
        output_transform=FIT_OUTPUT_TRANSFORM,
        replica_params=FIT_REPLICA_PARAMS,
        positive_outputs=positive_outputs(basis),
    )
