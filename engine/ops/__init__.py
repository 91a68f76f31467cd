"""Built-in ops. Importing this package registers them (see engine.registry)."""

from . import (  # noqa: F401
    amp,
    calo,
    core,
    eels,
    eels_bandgap,
    eels_cluster,
    eels_dielectric,
    eels_eelsfitter_v1,
    eels_zlp,
    hyperopt,
    lhc,
    lhc_eft,
    lhc_eft_bounds,
    lhc_omnifold,
    lhc_tagging,
    pdf_compress,
    pdf_fit,
    pdf_grid,
    replicas,
    solve,
)
