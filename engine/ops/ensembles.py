"""How a trained replica ensemble is stored: one layout for every training op.

A training op runs as one dask task returning plain arrays; the lazy dataset around it needs
every variable's dims, shape and dtype before training starts. The weights follow the
ensemble's architecture; the training record (per-replica stopping, chi2s, selection, the loss
history padded to its longest possible length) is the same for every model kind, so each op
adds only its own extras (input scaling, ...).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import dask.array as da
import numpy as np
import xarray as xr

REPLICA = "replica"
log = logging.getLogger("engine.replicas")
DROP_REASONS = ("kept", "never reached the validation threshold", "chi2 outlier")


def require_layer_activations(hidden: list[int], activations: list[str]) -> None:
    """The rule every network params model shares: one activation per layer (hidden + output).
    Raised as ValueError inside a model_validator, so the recipe's line is named."""
    if len(activations) != len(hidden) + 1:
        raise ValueError(f"{len(hidden) + 1} layers need {len(hidden) + 1} activations, "
                         f"found {len(activations)}")


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


def ensemble_architecture(n_in: int, hidden: list[int], activations: list[str], seed: int,
                          n_out: int = 1, **options) -> dict:
    """The architecture an [n_in, *hidden, n_out] ensemble will have (kernels.mlp.EnsembleMLP's
    `architecture()`), described without torch: building a graph imports no torch. `options` are
    kernels.architecture.architecture's (transforms, replica_params, ...). Bad settings (an
    unknown activation, a wrong number of them) are OpErrors.
    """
    from ..errors import OpError, did_you_mean
    from ..kernels.architecture import ACTIVATION_NAMES, architecture

    for name in activations:
        if name not in ACTIVATION_NAMES:
            raise OpError(f"unknown activation {name!r}{did_you_mean(name, ACTIVATION_NAMES)}; "
                          f"known: {', '.join(sorted(ACTIVATION_NAMES))}")
    try:
        return architecture([n_in, *hidden, n_out], list(activations), seed, **options)
    except ValueError as exc:
        raise OpError(str(exc)) from None


def checkpointed_training(context, epochs: int, validation_every: int, fit: Callable):
    """Run `fit(progress=, on_checkpoint=, resume_from=)` with lake checkpoints and progress logs.

    The checkpoint sits at the step's token (same inputs and params, same checkpoint), is read
    back before training and removed once training has finished.
    """
    from ..checkpoints import clear_checkpoint, load_checkpoint, save_checkpoint
    from ..storage import Lake

    lake = Lake(context.lake_url, context.storage_options)
    resume = load_checkpoint(lake, context.checkpoint_path)
    if resume is not None:
        log.info("%s: resuming training from epoch %d", context.step_id, int(resume["epoch"]))
    every = max(validation_every, epochs // 10)

    def progress(state) -> None:
        if state.epoch % every == 0 or state.epoch == state.n_epochs:
            log.info("%s: epoch %d/%d, %d/%d replicas training, median validation loss %.3g",
                     context.step_id, state.epoch, state.n_epochs, int((~state.frozen).sum()),
                     state.frozen.size, float(np.nanmedian(state.val)))

    result = fit(progress=progress, resume_from=resume,
                 on_checkpoint=lambda state: save_checkpoint(lake, context.checkpoint_path, state))
    clear_checkpoint(lake, context.checkpoint_path)
    log.info("%s: %s", context.step_id, result.summary())
    return result
