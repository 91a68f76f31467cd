"""How a trained replica ensemble is stored: one layout for every training op.

A training op runs as one dask task returning plain arrays; the lazy dataset around it needs
every variable's dims, shape and dtype before training starts. The weights follow the
ensemble's architecture; the training record (per-replica stopping, chi2s, selection, the loss
history padded to its longest possible length) is the same for every model kind, so each op
adds only its own extras (input scaling, ...).
"""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import xarray as xr

REPLICA = "replica"
DROP_REASONS = ("kept", "never reached the validation threshold", "chi2 outlier")


def history_length(epochs: int, validation_every: int) -> int:
    """Most check epochs a training can record (every k epochs, plus the last)."""
    return epochs // validation_every + 2


def result_arrays(result, checks: int) -> dict[str, np.ndarray]:
    """A kernels.train.TrainResult as fixed-shape arrays (history padded with NaN / -1)."""
    history = result.history
    r = result.kept.size
    count = min(checks, history.epoch.size)
    epochs = np.full(checks, -1, np.int64)
    train, val = np.full((checks, r), np.nan), np.full((checks, r), np.nan)
    epochs[:count], train[:count], val[:count] = (history.epoch[:count], history.train[:count],
                                                  history.val[:count])
    reason = np.array([next(i for i, text in enumerate(DROP_REASONS) if why.startswith(text))
                       for why in result.reasons], np.int8)
    return {**{k: np.asarray(v) for k, v in result.weights.items()},
            "best_epoch": result.best_epoch, "stopping_epoch": result.stopping_epoch,
            "chi2_train": result.best_train, "chi2_validation": result.best_val,
            "kept": result.kept, "drop_reason": reason, "n_reinit": result.n_reinit,
            "history_epoch": epochs, "history_train": train, "history_val": val}


def result_layout(architecture: dict, r: int, checks: int) -> dict[str, tuple]:
    """(dims, shape, dtype) of the weights and training record, known before training."""
    layout: dict[str, tuple] = {}
    sizes = architecture["sizes"]
    for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layout[f"weight_{k}"] = ((REPLICA, f"in_{k}", f"out_{k}"), (r, i, o), np.float32)
        layout[f"bias_{k}"] = ((REPLICA, f"one_{k}", f"out_{k}"), (r, 1, o), np.float32)
    per_replica = {"replica_id": np.int64, "generation": np.int64, "best_epoch": np.int64,
                   "stopping_epoch": np.int64, "chi2_train": float, "chi2_validation": float,
                   "kept": bool, "drop_reason": np.int8, "n_reinit": np.int64}
    layout.update({name: ((REPLICA,), (r,), dtype) for name, dtype in per_replica.items()})
    layout["history_epoch"] = (("check",), (checks,), np.int64)
    layout["history_train"] = (("check", REPLICA), (checks, r), float)
    layout["history_val"] = (("check", REPLICA), (checks, r), float)
    return layout


def lazy_ensemble(trained, layout: dict[str, tuple], architecture: dict, attrs: dict) -> xr.Dataset:
    """The model dataset whose every variable comes from the one delayed training result."""
    variables = {name: (dims, da.from_delayed(trained[name], shape, dtype))
                 for name, (dims, shape, dtype) in layout.items()}
    r = layout["kept"][1][0]
    model = xr.Dataset(variables, coords={REPLICA: np.arange(r)})
    model["drop_reason"].attrs = {"flag_values": list(range(len(DROP_REASONS))),
                                  "flag_meanings": " ".join(t.replace(" ", "_") for t in DROP_REASONS)}
    model.attrs = {"architecture": json.dumps(architecture), **attrs}
    return model


def weight_names(model: xr.Dataset) -> list[str]:
    """Variables EnsembleMLP.from_arrays needs to rebuild the networks."""
    return [n for n in model.data_vars if n.startswith(("weight_", "bias_", "param_"))] + [
        "replica_id", "generation"]
