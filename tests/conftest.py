"""Session-wide test setup: one persistent XLA compilation cache for the whole run.

Many tests compile the same programs again: every `train_and_evaluate` call builds a fresh
jitted train step, and the CLI, sharded and multi-process tests start new Python processes
that compile the spiral step from scratch. A compilation cache shared by the session (and
inherited by those subprocesses through the environment) compiles each program once. The
cache lives in a fresh temporary folder, so every run starts cold and CI measures the same
thing as a clean checkout; it is removed at the end. The pytest-xdist workers share the
controller's folder. Set DRIFT_JAX_TEST_COMPILATION_CACHE=0 to run without it.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

# XLA:CPU's lowest backend (LLVM) optimisation level: the suite is mostly compiles of tiny
# programs, and at -O0 it ran in 468 s against 636 s here (2 cores, 2026-12-01); the few
# tests that train for a while run somewhat slower. Subprocesses inherit it (tests that set
# XLA_FLAGS for them append to it). Set DRIFT_JAX_TEST_FULL_OPT=1, or give the flag in
# XLA_FLAGS yourself, to test at XLA's default level.
_OPT_FLAG = '--xla_backend_optimization_level'
if os.environ.get('DRIFT_JAX_TEST_FULL_OPT', '0') != '1' and _OPT_FLAG not in os.environ.get(
    'XLA_FLAGS', ''
):
    os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {_OPT_FLAG}=0'.strip()

_CACHE_DIR = None
_OWNER = False  # This process made the folder (and removes it).
if os.environ.get('DRIFT_JAX_TEST_COMPILATION_CACHE', '1') != '0':
    # pytest-xdist workers inherit the controller's folder (one cache for the whole run).
    _CACHE_DIR = os.environ.get('DRIFT_JAX_TEST_COMPILATION_CACHE_DIR')
    if not _CACHE_DIR or not os.path.isdir(_CACHE_DIR):
        _CACHE_DIR = tempfile.mkdtemp(prefix='drift_jax_test_xla_cache_')
        os.environ['DRIFT_JAX_TEST_COMPILATION_CACHE_DIR'] = _CACHE_DIR
        _OWNER = True
    os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE_DIR
    # Only programs that take a while to compile are worth a disk entry.
    os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0.3'

    import jax  # noqa: E402  (after the environment, so subprocesses and this one agree)

    jax.config.update('jax_compilation_cache_dir', _CACHE_DIR)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.3)


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001
    if _OWNER:
        shutil.rmtree(_CACHE_DIR, ignore_errors=True)


@pytest.fixture(scope='session')
def digits_data_dir(tmp_path_factory) -> str:
    """One data folder per test process for the 8x8 digits image tests: the dataset is
    built once, and the evaluator's classifiers, cached there by their settings, are
    trained once per setting instead of once per test."""
    return str(tmp_path_factory.mktemp('digits_tfds'))
