"""The search space of `replicas.hyperopt`: params of a training op named by dotted paths.

A path names one param of the training op's params model (`optimiser.lr`, `stopping.patience`),
one element of a list param (`hidden.0`) or every element (`hidden.*`, every layer's width). A
path that names nothing is refused while the recipe is validated, with a did-you-mean.
"""

from __future__ import annotations

import copy
from typing import Any, get_origin

from pydantic import BaseModel, Field, model_validator

from ..bounds import Params as _Params
from ..errors import did_you_mean
from ..registry import get_op


class Dimension(_Params):
    """One searched param: a range (low, high; log, integer, step) or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = Field(False, description="sample the range uniformly in log")
    integer: bool = Field(False, description="integer values (widths, epochs, patience)")
    step: float | None = Field(None, gt=0, description="grid step within the range")
    choices: list[Any] | None = Field(
        None,
        min_length=1,
        description="values to choose among (any YAML value: a list of widths, an activation list...)",
    )

    @model_validator(mode="after")
    def _kind(self) -> Dimension:
        ranged = self.low is not None or self.high is not None
        if ranged == (self.choices is not None):
            raise ValueError("give either low and high, or choices")
        if ranged:
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError(f"a range needs low < high, found low={self.low}, high={self.high}")
            if self.log and self.low <= 0:
                raise ValueError(f"a log range needs low > 0, found {self.low}")
        return self


def suggest(trial, path: str, dim: Dimension):
    """The trial's value of one dimension (choices are suggested by index: Optuna stores only
    plain values, and a choice may be a list)."""
    if dim.choices is not None:
        return dim.choices[trial.suggest_categorical(path, list(range(len(dim.choices))))]
    if dim.integer:
        return trial.suggest_int(path, int(dim.low), int(dim.high), log=dim.log, step=int(dim.step or 1))
    return trial.suggest_float(path, dim.low, dim.high, log=dim.log, step=dim.step)


def _paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += _paths(annotation, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def check_path(model: type[BaseModel], path: str, op: str) -> None:
    """A ValueError naming `path` (with did-you-mean) unless it names one param of `model`."""
    parts = path.split(".")
    cls: type[BaseModel] = model
    for i, part in enumerate(parts):
        field = cls.model_fields.get(part)
        if field is None:
            raise ValueError(f"unknown param {path!r} of {op}{did_you_mean(path, _paths(model))}")
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            cls = annotation
            continue
        rest = parts[i + 1 :]
        if rest and not (
            len(rest) == 1 and get_origin(annotation) is list and (rest[0] == "*" or rest[0].isdigit())
        ):
            raise ValueError(
                f"param {path!r} of {op}: {'.'.join(parts[: i + 1])!r} takes no sub-key "
                f"{'.'.join(rest)!r} (lists take an index or '*')"
            )
        return
    raise ValueError(
        f"param {path!r} of {op} is a group of params; name one of "
        f"{', '.join(p for p in _paths(model) if p.startswith(path + '.'))}"
    )


def apply_values(base: dict, values: dict[str, Any], defaults: dict) -> dict:
    """`base` with each searched path set: 'hidden.*' sets every layer, 'hidden.0' one; a list
    the base does not give is copied from the training op's `defaults` first."""
    merged = copy.deepcopy(base)
    for path, value in values.items():
        *head, last = path.split(".")
        target, fallback = merged, defaults
        for part in head:
            fallback = fallback.get(part) if isinstance(fallback, dict) else None
            if part not in target:  # a list is indexed into whole; a nested model takes the key alone
                target[part] = list(fallback) if isinstance(fallback, list) else {}
            target = target[part]
        if not isinstance(target, list):
            target[last] = value
        elif last == "*":
            target[:] = [value] * len(target)
        elif int(last) < len(target):
            target[int(last)] = value
        else:
            raise ValueError(f"{path!r} indexes layer {last} of {len(target)}: {target}")
    return merged


def training_defaults(op: str) -> dict:
    """The training op's defaults as plain data (lists and nested params to index into)."""
    out = {}
    for name, field in get_op(op).params.model_fields.items():
        if not field.is_required():
            value = field.get_default(call_default_factory=True)
            out[name] = value.model_dump() if isinstance(value, BaseModel) else value
    return out
