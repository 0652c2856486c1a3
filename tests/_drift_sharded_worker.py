"""Sharded-vs-single-device drift checks, run in a subprocess with 8 fake CPU devices.

tests/test_drift_engine.py starts this file, which sets XLA_FLAGS (it must be set before
jax is imported, hence the separate process), and reads one JSON object from stdout:
{case name: relative max difference between sharded and single-device results}.
"""

from __future__ import annotations

import os

# 8 fake CPU devices, added to the flags it was started with (under the tests, the suite's
# optimisation level: see conftest.py).
os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from drift_jax import field  # noqa: E402
from drift_jax.field import sharded  # noqa: E402


def rel(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def f32(a):
    return np.asarray(a, np.float32)


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    auto = (AxisType.Auto,) * 2
    mesh42 = jax.make_mesh((4, 2), ('data', 'fsdp'), axis_types=auto)
    mesh8 = jax.make_mesh((8, 1), ('data', 'fsdp'), axis_types=auto)
    mesh_explicit = jax.make_mesh((4, 2), ('data', 'fsdp'), axis_types=(AxisType.Explicit,) * 2)
    rng = np.random.default_rng(0)
    out = {}

    def check(name, x, y_pos, y_neg=None, mesh=mesh42, **kw):
        opts = field.DriftOptions(**kw.pop('opts', {}))
        want = jax.jit(lambda *a: field.compute_drift_field_with(*a, opts, **kw))(x, y_pos, y_neg)
        with jax.set_mesh(mesh):
            got = jax.jit(lambda *a: sharded.sharded_drift_field(*a, opts, mesh, **kw))(
                x, y_pos, y_neg
            )
        assert got.shape == want.shape and got.dtype == jnp.float32
        out[name] = rel(got, want)

    x = f32(rng.normal(size=(37, 2)))  # 37: not a multiple of 4 or 8.
    y = f32(rng.normal(size=(29, 2)) + 0.5)
    check('default-odd-n', x, y)
    check('mesh8-odd-n', x, y, mesh=mesh8)
    check('explicit-mesh', x, y, mesh=mesh_explicit)
    check('fewer-queries-than-devices', x[:5], y[:7], mesh=mesh8)
    check('blocked-per-device', x, y, opts=dict(block_size=5))
    check('tau0.01-raw', x * 4, y * 4, opts=dict(temperatures=(0.01,), scale_dist=False))
    check('none-laplace', x, y, opts=dict(normalize='none', temperatures=(0.2,)))
    x16 = f32(rng.normal(size=(21, 16)))
    y16 = f32(rng.normal(size=(30, 16)) + 0.3)
    n16 = f32(rng.normal(size=(18, 16)) - 0.3)
    w16 = f32(rng.uniform(0.5, 2.0, size=30))
    w16[3] = 0.0
    check(
        'targets-gauss-d16-weights',
        x16,
        y16,
        n16,
        weights_pos=w16,
        opts=dict(
            normalize='targets',
            kernel='gaussian',
            temperatures=(0.3, 0.6),
            scale_dist=False,
            self_mask=False,
        ),
    )
    # Groups, classifier-free-guidance negatives [x; unconditional] with self-mask, weights.
    g, n, d = 3, 13, 3
    xg = f32(rng.normal(size=(g, n, d)) * np.array([0.3, 1.0, 3.0])[:, None, None])
    pg = f32(rng.normal(size=(g, 17, d)) + 0.4)
    ng = np.concatenate([xg, f32(rng.normal(size=(g, 6, d)))], axis=1)
    wn = np.ones((g, n + 6), np.float32)
    wn[:, n:] = 0.5 * (n - 1) / 6
    wn[1, n + 2] = 0.0
    check('groups-cfg-selfmask', xg, pg, ng, weights_neg=wn, opts=dict(self_mask=True))
    # One temperature, raw distances, blocked: running row shifts, per-block column minima
    # combined across devices.
    check(
        'online-blocked-groups-cfg',
        xg,
        pg,
        ng,
        weights_neg=wn,
        opts=dict(self_mask=True, temperatures=(0.05,), scale_dist=False, block_size=4),
    )
    xb = jnp.asarray(x).astype(jnp.bfloat16)
    yb = jnp.asarray(y).astype(jnp.bfloat16)
    check('bf16', xb, yb)

    # The sharded loss and its gradient equal the single-device ones.
    opts = field.DriftOptions()

    def single(a):
        return field.drift_loss(a, y, None, opts)[0]

    def sharded_loss(a):
        return sharded.sharded_drift_loss(a, y, None, opts, mesh42)[0]

    out['loss'] = rel(jax.jit(sharded_loss)(x), jax.jit(single)(x))
    out['loss-grad'] = rel(jax.jit(jax.grad(sharded_loss))(x), jax.jit(jax.grad(single))(x))
    print(json.dumps(out))


if __name__ == '__main__':
    main()
