"""`replicalake ingest nnpdf`: NNPDF commondata from the `nnpdf-data` package into raw/NAME.

Parsing NNPDF's YAML is slow and needs the package; after one ingest a fit reads plain arrays:
per point the central value, kinematics, dataset, statistical and systematic uncertainties
(ADD/MULT treatment kept), and the experimental covariance built from them.

Systematics follow NNPDF's conventions: UNCORR/THEORYUNCORR are uncorrelated (they go to the
diagonal), CORR/THEORYCORR are correlated within their dataset, SKIP is dropped, and any other
name is correlated across every dataset that carries it (e.g. a shared normalisation). MULT
values are stored relative (fractions), ADD values absolute; the covariance uses MULT at the
data's central values (the experimental covariance).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import xarray as xr
from pydantic import Field

from ..errors import IngestError, did_you_mean
from ..storage import PROVENANCE_KEY, Lake, content_token
from ..zarr_io import write_template
from .registry import EntryName, IngestParams, register_format
from .staging import staged_entry

PER_DATASET = {"CORR", "THEORYCORR"}
UNCORRELATED = {"UNCORR", "THEORYUNCORR"}
SKIPPED = {"SKIP"}
DEFAULT_VARIANT = "legacy"


def commondata_root() -> Path:
    try:
        import nnpdf_data
    except ImportError as exc:
        raise IngestError("ingest nnpdf needs the `nnpdf-data` package (pip install -e '.[pdf]')") from exc
    return Path(nnpdf_data.__file__).parent / "commondata"


def known_sets(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if (p / "metadata.yaml").is_file())


@dataclass(frozen=True)
class DatasetName:
    setname: str
    observable: str

    @property
    def full(self) -> str:
        return f"{self.setname}_{self.observable}"


def resolve_name(name: str, root: Path) -> DatasetName:
    """SET or SET_OBSERVABLE -> (set, observable); unknown names get did-you-mean suggestions."""
    from nnpdf_data.commondataparser import parse_set_metadata

    sets = known_sets(root)
    prefixes = [s for s in sets if name.startswith(s + "_")]  # the longest: NMC_NC_NOTFIXED_P, not _NOTFIXED
    setname = name if name in sets else max(prefixes, key=len, default=None)
    if setname is None:
        raise IngestError(f"unknown NNPDF dataset {name!r}{did_you_mean(name, sets)}; "
                          f"nnpdf-data ships {len(sets)} sets, listed under {root}")
    observables = [o.observable_name for o in
                   parse_set_metadata(root / setname / "metadata.yaml").implemented_observables]
    if name == setname:
        if len(observables) != 1:
            raise IngestError(f"dataset {name!r} has observables {', '.join(observables)}: "
                              f"name one, e.g. {setname}_{observables[0]}")
        return DatasetName(setname, observables[0])
    observable = name[len(setname) + 1:]
    if observable not in observables:
        raise IngestError(f"dataset {setname!r} has no observable {observable!r}"
                          f"{did_you_mean(observable, observables)}; it has {', '.join(observables)}")
    return DatasetName(setname, observable)


def load_dataset(name: DatasetName, root: Path, variant: str | None):
    """nnpdf-data CommonData of one dataset; the 'legacy' variant when the default has no errors."""
    from nnpdf_data.commondataparser import load_commondata, parse_new_metadata

    metadata_file = root / name.setname / "metadata.yaml"
    metadata = parse_new_metadata(metadata_file, name.observable)
    if variant is None and not metadata.data_uncertainties and metadata.variants:
        variant = DEFAULT_VARIANT if DEFAULT_VARIANT in metadata.variants else next(iter(metadata.variants))
    if variant is not None:
        if variant not in metadata.variants:
            raise IngestError(f"{metadata_file}: {name.full} has no variant {variant!r}; "
                              f"variants: {', '.join(metadata.variants) or 'none'}")
        metadata = parse_new_metadata(metadata_file, name.observable, variant=variant)
    try:
        return load_commondata(metadata), metadata.kinematic_coverage, variant
    except Exception as exc:  # nnpdf-data raises plain validation errors
        raise IngestError(f"{metadata_file}: could not load {name.full}: {exc}") from exc


def _systematic_columns(central: np.ndarray, values: np.ndarray, systypes, dataset: str):
    """(key, treatment, values) per correlated systematic, the uncorrelated absolute sum in
    quadrature, and its MULT part's relative sum (a t0 covariance scales that part with t0, as
    NNPDF's does every MULT uncertainty; the ADD part stays absolute).

    values (n, nsys) are nnpdf-data's raw systematics: ADD absolute, MULT in percent.
    """
    uncorrelated, relative_uncorrelated = np.zeros(central.size), np.zeros(central.size)
    columns = []
    for k, (treatment, sysname) in enumerate(zip(systypes["treatment"], systypes["name"])):
        if sysname in SKIPPED:
            continue
        relative = values[:, k] / 100.0 if treatment == "MULT" else None
        if sysname in UNCORRELATED:
            absolute = values[:, k] if relative is None else relative * central
            uncorrelated += absolute**2
            if relative is not None:
                relative_uncorrelated += relative**2
            continue
        key = f"{dataset}:{sysname}:{k + 1}" if sysname in PER_DATASET else sysname
        columns.append((key, treatment, values[:, k] if relative is None else relative))
    return columns, np.sqrt(uncorrelated), np.sqrt(relative_uncorrelated)


def _sys_matrix(parts: list[tuple[int, list]], n: int, treatment: str):
    """(n, n_sys) matrix of one treatment, a column per distinct key (shared across datasets)."""
    keys: dict[str, int] = {}
    entries = []
    for offset, columns in parts:
        for key, kind, values in columns:
            if kind == treatment:
                entries.append((keys.setdefault(key, len(keys)), offset, values))
    matrix = np.zeros((n, len(keys)))
    for column, offset, values in entries:
        matrix[offset:offset + values.size, column] += values
    return matrix, list(keys)


def _kinematic_order(table, coverage: list[str]) -> np.ndarray:
    """Points ordered by x, then Q2, within their dataset (DIS), so curves over a dataset's
    points run left to right; other kinematics keep the published order."""
    if coverage[:2] != ["x", "Q2"]:
        return np.arange(len(table))
    return np.lexsort((table["kin2"].to_numpy(float), table["kin1"].to_numpy(float)))


def _target(setname: str) -> int:
    """0 proton, 1 deuteron, -1 other (from NNPDF's naming: ..._P, ..._D)."""
    return {"P": 0, "D": 1}.get(setname.rsplit("_", 1)[-1], -1)


def read_commondata(names: list[str], variant: str | None = None) -> xr.Dataset:
    """The datasets as one in-memory xarray Dataset over `point` (see module docstring), uncut."""
    if not names:
        raise IngestError("name at least one NNPDF dataset")
    root = commondata_root()
    resolved = [resolve_name(n, root) for n in names]
    duplicates = {r.full for r in resolved if [x.full for x in resolved].count(r.full) > 1}
    if duplicates:
        raise IngestError(f"dataset(s) {', '.join(sorted(duplicates))} named twice")
    blocks, parts, kin_names, offset = [], [], None, 0
    for index, name in enumerate(resolved):
        data, coverage, used = load_dataset(name, root, variant)
        coverage = list(coverage)
        if kin_names is None:
            kin_names = coverage
        elif coverage != kin_names:
            raise IngestError(f"dataset {name.full} has kinematics {coverage}, but {resolved[0].full} "
                              f"has {kin_names}: ingest them into separate entries")
        order = _kinematic_order(data.commondata_table, coverage)
        table = data.commondata_table.iloc[order]
        central = table["data"].to_numpy(float)
        systematics = data.systematics_table.to_numpy(float).reshape(len(order), -1)[order]
        columns, uncorrelated, relative_uncorrelated = _systematic_columns(
            central, systematics, data.systype_table, name.full)
        parts.append((offset, columns))
        n = len(table)
        blocks.append({"data": central, "stat": table["stat"].to_numpy(float),
                       "sys_uncorrelated": uncorrelated,
                       "sys_uncorrelated_multiplicative": relative_uncorrelated,
                       "dataset_index": np.full(n, index),
                       "target_index": np.full(n, _target(name.setname)),
                       **{k: table[f"kin{i + 1}"].to_numpy(float) for i, k in enumerate(coverage)},
                       "variant": used})
        offset += n
    joined = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0] if k != "variant"}
    add, add_keys = _sys_matrix(parts, offset, "ADD")
    mult, mult_keys = _sys_matrix(parts, offset, "MULT")
    central = joined["data"]
    absolute_mult = mult * central[:, None]
    covariance = (np.diag(joined["stat"] ** 2 + joined["sys_uncorrelated"] ** 2)
                  + add @ add.T + absolute_mult @ absolute_mult.T)
    coords = {k: ("point", joined[k]) for k in kin_names}
    coords["target_index"] = ("point", joined["target_index"])
    variables = {
        "data": ("point", central, {"long_name": "central value"}),
        "dataset_index": ("point", joined["dataset_index"], {"long_name": "index into attrs datasets"}),
        "stat": ("point", joined["stat"], {"long_name": "statistical uncertainty (absolute)"}),
        "sys_uncorrelated": ("point", joined["sys_uncorrelated"],
                             {"long_name": "uncorrelated systematics in quadrature (absolute)"}),
        "sys_uncorrelated_multiplicative": ("point", joined["sys_uncorrelated_multiplicative"],
                                            {"long_name": "MULT part of sys_uncorrelated (relative)"}),
        "uncorrelated": ("point", np.hypot(joined["stat"], joined["sys_uncorrelated"]),
                         {"long_name": "statistical and uncorrelated systematic in quadrature (absolute)"}),
        "sys_additive": (("point", "sys_add"), add,
                         {"long_name": "correlated ADD systematics (absolute)", "names": add_keys}),
        "sys_multiplicative": (("point", "sys_mult"), mult,
                               {"long_name": "correlated MULT systematics (relative)", "names": mult_keys}),
        "covariance": (("point", "point_b"), covariance,
                       {"long_name": "experimental covariance (MULT at the central values)"}),
    }
    return xr.Dataset(variables, coords=coords, attrs={
        "datasets": [r.full for r in resolved], "variants": [str(b["variant"]) for b in blocks],
        "dataset_points": [int(b["data"].size) for b in blocks],
        "targets": ["proton", "deuteron"], "kinematics": kin_names,
        "description": "NNPDF commondata (nnpdf-data), target_index: 0 proton, 1 deuteron, -1 other"})


def apply_cuts(dataset: xr.Dataset, q2_min: float | None, w2_min: float | None) -> xr.Dataset:
    """Keep DIS points with Q^2 > q2_min and W^2 > w2_min, validphys's rule to the letter.

    Cutting at ingest keeps the stored covariance that of the points a fit sees (NNPDF's standard
    DIS cuts: Q^2 > 3.49 GeV^2, W^2 > 12.5 GeV^2, where higher twists and target masses are small).
    W^2 is validphys's Q^2 (1 - x) / x, without the proton's m_p^2 = 0.88 GeV^2 (so it is the
    physical W^2 > 13.38 GeV^2): with m_p^2 we kept 18 points of SLAC, BCDMS and NMC that NNPDF
    cuts; tests/benchmarks/bench_n3fit.py checks validphys keeps exactly our points.
    """
    if q2_min is None and w2_min is None:
        return dataset
    missing = [k for k in ("x", "Q2") if k not in dataset.coords]
    if missing:
        raise IngestError("cuts need DIS kinematics x and Q2; the datasets have "
                          f"{dataset.attrs['kinematics']}")
    x, q2 = dataset["x"].values, dataset["Q2"].values
    keep = np.ones(x.size, bool)
    if q2_min is not None:
        keep &= q2 > q2_min
    if w2_min is not None:
        keep &= q2 * (1 - x) / x > w2_min
    if not keep.any():
        raise IngestError(f"the cuts Q2 > {q2_min}, W2 > {w2_min} leave no data point")
    cut = dataset.isel(point=keep, point_b=keep)
    counts = np.bincount(dataset["dataset_index"].values[keep], minlength=len(dataset.attrs["datasets"]))
    cut.attrs["dataset_points"] = counts.tolist()
    cut.attrs["cuts"] = {"q2_min": q2_min, "w2_min": w2_min, "points_before": int(x.size)}
    return cut


class NnpdfParams(IngestParams):
    """Copy NNPDF commondata (central values, kinematics, uncertainties, covariance) into raw/NAME."""

    names: list[str] = Field(alias="datasets", description="NNPDF dataset names from nnpdf-data (SET or "
                             "SET_OBSERVABLE, e.g. SLAC_NC_NOTFIXED_P BCDMS_NC_NOTFIXED_P_EM-F2)")
    entry: EntryName = Field(alias="name")
    variant: str | None = Field(None, description="uncertainty variant (default: the dataset's own, "
                                f"else {DEFAULT_VARIANT!r})")
    q2_min: float | None = Field(None, ge=0, description="keep points with Q^2 > this (GeV^2; NNPDF's "
                                 "DIS cut: 3.49)")
    w2_min: float | None = Field(None, ge=0, description="keep points with W^2 = Q^2 (1 - x) / x > this "
                                 "(GeV^2; NNPDF's DIS cut: 12.5)")


@register_format("nnpdf", NnpdfParams, positional=("datasets", "name"))
def ingest_nnpdf(lake: Lake, names: list[str], entry: str, variant: str | None = None,
                 q2_min: float | None = None, w2_min: float | None = None) -> str:
    """Read the datasets, apply the kinematic cuts, publish raw/ENTRY; returns a description."""
    import nnpdf_data

    lake.new_entry_path("raw", entry)  # refuse a bad entry name before the slow parsing
    dataset = apply_cuts(read_commondata(names, variant), q2_min, w2_min)
    version = getattr(nnpdf_data, "__version__", "unknown")
    token = content_token("nnpdf-data", version, dataset.attrs["datasets"], dataset.attrs["variants"],
                          q2_min, w2_min)
    dataset.attrs[PROVENANCE_KEY] = {"token": token, "ingest": "nnpdf", "nnpdf_data_version": version}
    description = f"NNPDF commondata: {', '.join(dataset.attrs['datasets'])}"
    with staged_entry(lake, "raw", entry) as stage:
        options = None if lake.is_local else lake.storage_options
        dask.compute(*write_template(dataset.chunk(), lake.url(stage.path), options,
                                     merge_small_chunks=False))
        stage.publish(description, {"token": token})
    return (f"{dataset.sizes['point']} points from {len(names)} dataset(s), "
            f"{dataset.sizes['sys_add']} ADD + {dataset.sizes['sys_mult']} MULT correlated systematics")
