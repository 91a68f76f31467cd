"""The ML4EFT analytic toy and the algebra of EFT terms, in numpy only (no torch).

Why its own module: the toy's event samples are plain numpy, and building the graph of a toy
recipe (`replicalake plan`) reads its constants, term names and cross sections; none of it may
import torch, which kernels.eft (the term networks and their training) needs.

The EFT cross section is a polynomial in the Wilson coefficients c, so the likelihood ratio is
r(x, c) = 1 + sum_j c_j NN_j(x) + sum_{j<=k} c_j c_k NN_jk(x) (DOMAIN.md section 4); here are the
terms' names, their coefficient products at points c, and r from the terms' values.

Why the toy is written as monomials x1^a x2^b times the SM density: every moment and every
mixture component can then be sampled exactly (x1 ~ Gamma(a + 1), |x2| ~ chi_(b + 1)), and any
r(x, c) >= 0 is sampled exactly by accept-reject from the mixture with absolute weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

# -- the analytic toy -----------------------------------------------------------------------------
TOY_NAME = "ml4eft-toy-2d"
TOY_FEATURES = ("x1", "x2")
TOY_COEFFICIENTS = ("c1", "c2")
# term -> monomials (weight, power of x1, power of x2) of dsigma_term / dsigma_SM. With these,
# r = (1 + c1 x1/4 + c2 x2^2/8)^2 + (c1 x1 x2/4)^2 >= 0 for every c; with c2 = 0 it is DOMAIN.md's
# r = 1 + c x1/2 + c^2 x1^2 (1 + x2^2)/16.
TOY_TERMS: dict[tuple[str, ...], tuple[tuple[float, int, int], ...]] = {
    ("c1",): ((0.5, 1, 0),),
    ("c2",): ((0.25, 0, 2),),
    ("c1", "c1"): ((1 / 16, 2, 0), (1 / 16, 2, 2)),
    ("c1", "c2"): ((1 / 16, 1, 2),),
    ("c2", "c2"): ((1 / 64, 0, 4),),
}
SM_SIGMA = 1.0
# The output hook of every term network (1 + s NN > 0, s = the row's replica param "c_scale"):
# kernels.eft registers it, lhc.eft_train declares it in the architecture before training.
TERM_OUTPUT_TRANSFORM = "eft_positivity"


def term_name(term: Sequence[str]) -> str:
    """'c1' for a linear term, 'c1*c2' for a quadratic one: the name samples and models use."""
    return "*".join(term)


def parse_term(name: str) -> tuple[str, ...]:
    return tuple(name.split("*"))


def eft_terms(coefficients: Sequence[str], quadratic: bool = True) -> list[tuple[str, ...]]:
    """Linear terms, then the quadratic ones j <= k, in the order the coefficients are given."""
    terms = [(c,) for c in coefficients]
    if quadratic:
        terms += [(a, b) for i, a in enumerate(coefficients) for b in coefficients[i:]]
    return terms


def _moment(a: int, b: int) -> float:
    """E_SM[x1^a x2^b]: a! for x1 ~ Exp(1), (b - 1)!! for even b and x2 ~ N(0, 1)."""
    return math.factorial(a) * (math.prod(range(b - 1, 0, -2)) if b % 2 == 0 else 0.0)


def toy_sigma(term: Sequence[str]) -> float:
    """The term's cross section sigma_term = E_SM[dsigma_term / dsigma_SM] (sigma_SM = 1)."""
    return sum(w * _moment(a, b) for w, a, b in TOY_TERMS[tuple(term)])


def _term_density(term: Sequence[str], x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    return sum(w * x1**a * x2**b for w, a, b in TOY_TERMS[tuple(term)])


def toy_ratio(x1: np.ndarray, x2: np.ndarray, points: np.ndarray,
              coefficients: Sequence[str]) -> np.ndarray:
    """Exact r(x, c), (G, n), at coefficient points (G, len(coefficients)); absent ones are 0."""
    terms = [t for t in TOY_TERMS if set(t) <= set(coefficients)]
    products = coefficient_products(points, coefficients, terms)
    densities = np.array([_term_density(t, x1, x2) for t in terms]).reshape(len(terms), -1)
    return 1.0 + products @ densities


def toy_cross_section(points: np.ndarray, coefficients: Sequence[str]) -> np.ndarray:
    """sigma(c) / sigma_SM of the toy at points (G, len(coefficients))."""
    terms = [t for t in TOY_TERMS if set(t) <= set(coefficients)]
    return SM_SIGMA + coefficient_products(points, coefficients, terms) @ np.array(
        [toy_sigma(t) for t in terms])


def _monomial_draw(rng: np.random.Generator, a: int, b: int, n: int) -> np.ndarray:
    """n exact draws from x1^a x2^b e^-x1 phi(x2) (normalised): Gamma(a + 1) x signed chi_(b + 1)."""
    x1 = rng.gamma(a + 1.0, 1.0, n)
    x2 = rng.standard_normal(n) if b == 0 else (
        np.sqrt(rng.chisquare(b + 1, n)) * rng.choice([-1.0, 1.0], n))
    return np.stack([x1, x2], axis=-1)


def sample_toy(rng: np.random.Generator, n: int, c: Mapping[str, float]) -> np.ndarray:
    """n events (n, 2) from dsigma(c) = dsigma_SM r(x, c) of the toy, exactly."""
    names = list(c)
    terms = [t for t in TOY_TERMS if set(t) <= set(names)]
    products = coefficient_products(np.array([[c[k] for k in names]], float), names, terms)[0]
    return _sample_mixture(rng, n, dict(zip(terms, products)))


def sample_toy_term(rng: np.random.Generator, n: int, term: Sequence[str], c_train: float) -> np.ndarray:
    """n events of "SM + term" at c_train: dsigma_SM + c_train^order dsigma_term (an ML4EFT sample)."""
    return _sample_mixture(rng, n, {tuple(term): c_train ** len(term)})


def _sample_mixture(rng: np.random.Generator, n: int, products: Mapping[tuple, float]) -> np.ndarray:
    """n exact draws from dsigma_SM (1 + sum_t P_t dsigma_t / dsigma_SM).

    Proposal: the mixture of SM and every monomial with weight |P_t w|; accepting with
    probability r(x) / (1 + sum |.| monomials) <= 1 gives the target. A negative r at a proposed
    event means the products describe no physical cross section: a ValueError.
    """
    components = [(1.0, 0, 0)] + [(p * w, a, b) for t, p in products.items()
                                  for w, a, b in TOY_TERMS[t] if p != 0]
    weights = np.array([abs(w) * _moment(a, b) for w, a, b in components])
    out, have = np.empty((n, 2)), 0
    while have < n:
        size = max(64, int(1.2 * (n - have)))
        which = rng.choice(len(components), size, p=weights / weights.sum())
        draws = np.empty((size, 2))
        for k, (_, a, b) in enumerate(components):
            picked = which == k
            draws[picked] = _monomial_draw(rng, a, b, int(picked.sum()))
        x1, x2 = draws[:, 0], draws[:, 1]
        signed = 1.0 + sum(w * x1**a * x2**b for w, a, b in components[1:])
        bound = 1.0 + sum(abs(w) * x1**a * x2**b for w, a, b in components[1:])
        if np.any(signed < 0):
            raise ValueError(f"dsigma is negative at some x for coefficient products "
                             f"{ {term_name(t): p for t, p in products.items()} }: no events to sample")
        accepted = draws[rng.random(size) * bound < signed][: n - have]
        out[have: have + len(accepted)] = accepted
        have += len(accepted)
    return out


# -- the ratio from term networks -----------------------------------------------------------------
def coefficient_products(points: np.ndarray, coefficients: Sequence[str],
                         terms: Sequence[Sequence[str]]) -> np.ndarray:
    """(G, T) products c_j (linear) or c_j c_k (quadratic) of each term at each point (G, C)."""
    points = np.atleast_2d(np.asarray(points, float))
    index = {name: i for i, name in enumerate(coefficients)}
    if not terms:
        return np.zeros((len(points), 0))
    return np.stack([np.prod([points[:, index[c]] for c in t], axis=0) for t in terms], axis=-1)


def ratio_from_terms(products: np.ndarray, nn: np.ndarray) -> np.ndarray:
    """r = 1 + sum_t P_t NN_t: products (G, T), nn (T, ...) -> (G, ...)."""
    t = nn.shape[0]
    return 1.0 + (products @ nn.reshape(t, -1)).reshape(products.shape[0], *nn.shape[1:])
