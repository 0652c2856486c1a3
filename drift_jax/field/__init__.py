"""The drifting field V(x) and the drifting loss, as pure JAX functions.

Modules: `options` (DriftOptions), `engine` (the passes shared by every form), `dense` and
`blocked` (the two single-device forms), `floored` (the official release's floored affinity,
`affinity_floor > 0`), `driver` (input checks, the choice of form, the groups), `api`
(`compute_drift_field`, `drift_loss`) and `sharded` (the queries split over a device mesh).
Import the public functions from here.
"""

from drift_jax.field.api import (
    compute_drift_field,
    compute_drift_field_with,
    drift_loss,
    pairwise_distances,
)
from drift_jax.field.driver import (
    BLOCKED_MAX_DIM,
    BLOCKED_MIN_ENTRIES,
    DENSE_MEMORY_LIMIT_BYTES,
    dense_memory_bytes,
    group_chunk,
    select_block_size,
)
from drift_jax.field.options import (
    KERNELS,
    NORMALIZATIONS,
    PAPER_TEMPERATURES,
    DriftOptions,
    options_from_config,
    validate_options,
)
from drift_jax.field.sharded import sharded_drift_field, sharded_drift_loss

__all__ = [
    'BLOCKED_MAX_DIM',
    'BLOCKED_MIN_ENTRIES',
    'DENSE_MEMORY_LIMIT_BYTES',
    'KERNELS',
    'NORMALIZATIONS',
    'PAPER_TEMPERATURES',
    'DriftOptions',
    'compute_drift_field',
    'compute_drift_field_with',
    'dense_memory_bytes',
    'drift_loss',
    'group_chunk',
    'options_from_config',
    'pairwise_distances',
    'select_block_size',
    'sharded_drift_field',
    'sharded_drift_loss',
    'validate_options',
]
