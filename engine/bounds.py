"""What every params model shares: unknown keys and non-finite numbers refused, counts bounded.

A recipe or a command line is input from anyone, and validation must not be the thing that
breaks the machine: `replicas: 1e9` once allocated 9 GB while a recipe was only validated, and
`n_points: 1e12` died in numpy with a traceback. So every count an op or ingest format sizes an
allocation, a loop or a task graph by has an upper bound here, checked by pydantic with the
other params (the error names the file, line and key) and shown by `replicalake ops`. Each
bound is far above any analysis we know of and low enough that what that one value sizes, with
the other params at their defaults, fits a 24 GiB machine; the comment beside each says why.
Whether several large values fit together is the memory projection's job (engine/projection.py).

Floats are finite: NaN or inf where a number is expected (a range `[.nan, 1]`, a learning rate)
only ever produced all-NaN outputs or endless loops, so `Params` refuses them everywhere.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class Params(BaseModel):
    """Base of every op's and ingest format's params model (and the recipe's own models).

    Unknown keys are refused so a typo is an error rather than a silently ignored setting;
    NaN and inf are refused wherever a float is read (see the module docstring).
    """

    model_config = STRICT


# NNPDF fits 100-1000 replicas; each holds a copy of the pseudo-data and a network (10^4
# replicas of NNPDF4.0's 4,600 points are 370 MB; of a 20-20 network, 4 MB of weights).
MAX_REPLICAS = 10_000
# NNPDF4.0 stops by 17,000 epochs; the loss history kept is epochs / validation_every rows per
# replica (10^5 rows, 8 MB for 10 replicas, at the default validation_every of 10).
MAX_EPOCHS = 1_000_000
# Data points of a table fitted with a full covariance: 20,000^2 float64 is 3.2 GB and a fit
# holds a few copies (inverse, Cholesky factor); NNPDF4.0 fits ~4,600 points.
MAX_POINTS = 20_000
# Knots of a grid built beside the data: FK tables are points x 14 flavours x nodes (2.1 GB at
# 4,600 points); the ZLP bands hold a chunk's spectra x ln N nodes. NNPDF uses 50 x nodes.
MAX_GRID_NODES = 4_096
# K-means centroids: EELS maps use 3-20; a batch holds pixels x K distances (330 MB at the default
# 4,096-pixel batch and 10^4 centroids).
MAX_CLUSTERS = 10_000
# Pixels held at once (a K-means batch or start): 10^6 pixels x 20 centroids is 160 MB of distances.
MAX_SAMPLE = 1_000_000
# Spectra sampled per cluster and held at once: 10^5 x 2,048 channels of float64 is 1.6 GB.
MAX_SPECTRA = 100_000
# Restarts, iterations and re-initialisations: each a full pass, so a bound on time, not memory.
MAX_REPEATS = 1_000
# Events (or jets) generated: written chunk by chunk, so disk rather than memory; 10^8 events of
# a few float64 columns is a few GB, 50x the samples of the shipped recipes.
MAX_EVENTS = 100_000_000
# Rows held in memory at once (a chunk, a read step, a minibatch, a training set of jets):
# 10^7 rows x 30 float64 columns is 2.4 GB.
MAX_ROWS = 10_000_000
# Units of one hidden layer: a 4,096 x 4,096 float32 layer is 64 MB per replica.
MAX_WIDTH = 4_096
# Hidden layers of one network: the shipped networks have 2-3.
MAX_LAYERS = 64
# Bins of a whole histogram (all axes): a chunk's fill vector is 2 x bins float64, 16 MB.
MAX_BINS = 1_000_000
# Points of a likelihood scan (all coefficients together): laid out while the graph is built (16 MB
# at 10^6); what each event chunk then holds per point is projected by the run (--max-memory).
MAX_SCAN_POINTS = 1_000_000
# Chunk results summed per node of a tree reduction: 256 fill vectors of 16 MB are 4 GB.
MAX_FANIN = 256
# Chunks one op lays out: each is a few dask tasks, built while a recipe is only validated
# (10^5 take seconds; the shipped recipes lay out at most a few hundred).
MAX_CHUNKS = 100_000
# Elements of a chunk along one dim: 10^9 float64 is 8 GB, a third of the machine.
MAX_CHUNK = 1_000_000_000
# Seeds: numpy's legacy generator, torch on some builds and most tools take 32-bit seeds.
MAX_SEED = 2**32 - 1
# Constituents per jet: the top-tagging reference keeps 200.
MAX_CONSTITUENTS = 1_000
# Pixels along one side of a generated image: 10^4 x 10^4 is 100x the 10^6-spectrum image the
# lake is sized for.
MAX_IMAGE_SIDE = 10_000
# Energy channels of a spectrum: a 32 x 32 pixel chunk of 65,536 float32 channels is 256 MB.
MAX_CHANNELS = 65_536
# Pixels along one side of an image chunk: 512 x 512 spectra of 2,048 float32 channels is 2 GB.
MAX_PIXEL_CHUNK = 512

# The count types: an int no larger than its bound. Lower bounds stay on each field (pydantic
# lets a type's ge replace a field's, so a type carrying ge=1 would undo a field's ge=4).
Replicas = Annotated[int, Field(le=MAX_REPLICAS)]
Epochs = Annotated[int, Field(le=MAX_EPOCHS)]
Points = Annotated[int, Field(le=MAX_POINTS)]
GridNodes = Annotated[int, Field(le=MAX_GRID_NODES)]
Clusters = Annotated[int, Field(le=MAX_CLUSTERS)]
Sample = Annotated[int, Field(le=MAX_SAMPLE)]
Spectra = Annotated[int, Field(le=MAX_SPECTRA)]
Repeats = Annotated[int, Field(le=MAX_REPEATS)]
Events = Annotated[int, Field(le=MAX_EVENTS)]
Rows = Annotated[int, Field(le=MAX_ROWS)]
Width = Annotated[int, Field(le=MAX_WIDTH)]
Widths = Annotated[list[Width], Field(max_length=MAX_LAYERS)]  # hidden layers of a network
Bins = Annotated[int, Field(le=MAX_BINS)]
Fanin = Annotated[int, Field(le=MAX_FANIN)]
ChunkLength = Annotated[int, Field(le=MAX_CHUNK)]
Constituents = Annotated[int, Field(le=MAX_CONSTITUENTS)]
ImageSide = Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)]
Channels = Annotated[int, Field(ge=2, le=MAX_CHANNELS)]
PixelChunk = Annotated[int, Field(ge=1, le=MAX_PIXEL_CHUNK)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]

_LIMITS = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"),
           ("minItems", "items >="), ("maxItems", "items <="))


def limits_text(schema: dict[str, Any]) -> str:
    """The bounds in one field's JSON schema as text, e.g. '>= 1, <= 10000': the field's own,
    those of its non-null alternative (`int | None`) and those of its items or values (a list of
    widths, a mapping of chunk sizes, a tuple's items by position). `replicalake ops` and the
    ingest commands' help show them beside each param."""
    parts = []
    for branch in [schema, *schema.get("anyOf", [])]:
        inner = next((part for part in (branch.get("items"), branch.get("additionalProperties"))
                      if isinstance(part, dict)), {})
        parts += _own_limits(branch) + [f"each {part}" for part in _own_limits(inner)]
        by_position = [_own_limits(item) for item in branch.get("prefixItems", [])]
        if by_position and all(limits == by_position[0] for limits in by_position):
            parts += [f"each {part}" for part in by_position[0]]
        else:
            parts += [f"item {i} {part}" for i, limits in enumerate(by_position, 1) for part in limits]
    return ", ".join(dict.fromkeys(parts))


def _own_limits(schema: dict[str, Any]) -> list[str]:
    tuple_length = schema.get("minItems", 0) == schema.get("maxItems")  # a tuple's length is its type
    return [f"{sign} {schema[key]}" for key, sign in _LIMITS
            if key in schema and not (tuple_length and key in ("minItems", "maxItems"))]
