"""Write the test set LHToy/ (lhagrid1, by hand, not with engine code): `python make_toy_set.py`.

The Les Houches toy PDF of DOMAIN.md section 3 at Q0 = sqrt(2) GeV, given a made-up smooth Q
dependence so that Q interpolation is exercised, on a coarse grid with two Q subgrids split at
the b-quark threshold 4.75 GeV, three members (0 = central, 1 and 2 scaled by 1.02 and 0.98).
The file is written with plain string formatting so the reader is checked against an
independent writer; `toy_xf` is imported by the tests as the analytic truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NAME = "LHToy"
FLAVOURS = [-3, -2, -1, 1, 2, 3, 21]
X_KNOTS = np.geomspace(1e-5, 1.0, 12, endpoint=False).tolist() + [1.0]
Q_KNOTS = [[1.4142135623730951, 2.0, 3.0, 4.75], [4.75, 10.0, 30.0, 100.0, 1000.0]]
SCALES = [1.0, 1.02, 0.98]


def toy_xf(pid: int, x: np.ndarray, q: np.ndarray) -> np.ndarray:
    """x f(x, Q) of the toy: Les Houches at Q0^2 = 2 GeV^2 times a slow log Q evolution."""
    x, q = np.asarray(x, float), np.asarray(q, float)
    dbar = 0.1939875 * x**-0.1 * (1 - x) ** 6
    ubar = (1 - x) * dbar
    sea = 0.2 * (ubar + dbar)
    valence = {2: 5.1072 * x**0.8 * (1 - x) ** 3, 1: 3.06432 * x**0.8 * (1 - x) ** 4}
    base = {-3: sea, -2: ubar, -1: dbar, 3: sea, 21: 1.7 * x**-0.1 * (1 - x) ** 5,
            2: valence[2] + ubar, 1: valence[1] + dbar}[pid]
    return base * (1 + 0.05 * np.log(q**2 / 2.0) * (1 - 2 * x))


def write(folder: Path) -> None:
    setdir = folder / NAME
    setdir.mkdir(parents=True, exist_ok=True)
    (setdir / f"{NAME}.info").write_text(
        'SetDesc: "Les Houches toy PDF for ReplicaLake tests"\n'
        "Authors: ReplicaLake\nFormat: lhagrid1\nDataVersion: 1\nNumMembers: 3\n"
        "Particle: 2212\nFlavors: [-3, -2, -1, 1, 2, 3, 21]\nOrderQCD: 0\nErrorType: replicas\n"
        "XMin: 1.0e-05\nXMax: 1.0\nQMin: 1.4142135623730951\nQMax: 1000.0\nMZ: 91.1876\n"
        "AlphaS_MZ: 0.118\n")
    for member, scale in enumerate(SCALES):
        lines = [f"PdfType: {'central' if member == 0 else 'replica'}", "Format: lhagrid1", "---"]
        for q_knots in Q_KNOTS:
            lines += [" ".join(repr(v) for v in X_KNOTS), " ".join(repr(v) for v in q_knots),
                      " ".join(str(f) for f in FLAVOURS)]
            for x in X_KNOTS:
                for q in q_knots:
                    lines.append(" ".join(f"{scale * float(toy_xf(f, x, q)):.8e}" for f in FLAVOURS))
            lines.append("---")
        (setdir / f"{NAME}_{member:04d}.dat").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    write(Path(__file__).resolve().parent)
