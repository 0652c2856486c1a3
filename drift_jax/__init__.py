"""drift_jax: Drifting Models (one-step generative models) in JAX and Flax.

The notebook-level API is importable from the top level; submodules load on first use, so
`import drift_jax` is cheap and has no side effects (no device or distributed start-up).
"""

from __future__ import annotations

import importlib

__version__ = '0.1.0'

_EXPORTS = {
    'compute_drift_field': 'drift_jax.field',
    'drift_loss': 'drift_jax.field',
    'DriftOptions': 'drift_jax.field',
    'train_and_evaluate': 'drift_jax.train',
    'make_train_step': 'drift_jax.train',
    'create_train_state': 'drift_jax.train',
    'sample': 'drift_jax.train',
    'load_run': 'drift_jax.train',
    'make_run': 'drift_jax.train',
    'METHODS': 'drift_jax.methods',
    'energy_distance': 'drift_jax.eval.points',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
