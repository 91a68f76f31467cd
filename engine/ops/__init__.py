"""Built-in ops. Importing this package registers them (see engine.registry)."""

from . import (  # noqa: F401
    core,
    eels,
    eels_bandgap,
    eels_cluster,
    eels_dielectric,
    eels_zlp,
    lhc,
    lhc_eft,
    lhc_eft_bounds,
    lhc_omnifold,
    lhc_tagging,
    pdf_fit,
    pdf_grid,
    replicas,
)
