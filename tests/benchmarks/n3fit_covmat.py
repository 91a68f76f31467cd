"""validphys's experimental and t0 covariance of the n3fit inputs, saved for bench_n3fit.py.

Runs in the `nnpdf` environment (NNPDF_PROFILE_PATH and LHAPDF_DATA_PATH set by the caller):
  python tests/benchmarks/n3fit_covmat.py WORK THEORY_ID
reads WORK/inputs.json (n3fit_inputs.write_inputs) and writes WORK/validphys_covmat_{exp,t0}.npy,
points in the inputs' order (the FK tables' bin order).
"""

import json
import sys
from pathlib import Path

import numpy as np
from validphys.api import API

work, theory_id = Path(sys.argv[1]), int(sys.argv[2])
inputs = json.loads((work / "inputs.json").read_text())
common = {
    "dataset_inputs": [{"dataset": name} for name in inputs["datasets"]],
    "theoryid": theory_id,
    "use_cuts": "internal",
    "q2min": 3.49,
    "w2min": 12.5,
}
experimental = API.dataset_inputs_covmat_from_systematics(**common)
t0 = API.dataset_inputs_t0_covmat_from_systematics(**common, t0pdfset=inputs["t0_set"], use_t0=True)
np.save(work / "validphys_covmat_exp.npy", np.asarray(experimental))
np.save(work / "validphys_covmat_t0.npy", np.asarray(t0))
