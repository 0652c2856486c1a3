"""Tests for the device memory bank and the guidance-scale helpers.

Push and sample are checked against a sequential NumPy ring-buffer model, including
wraparound, saturation, repeated classes in one batch and batches larger than a buffer.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drift_jax.data import memory_bank as mb
from drift_jax.methods import guidance

SHAPE = (2, 3)
# Jitted once per module: eager dispatch of the many small ops is slower than compiling.
push = jax.jit(mb.push)
sample_pos = jax.jit(mb.sample_pos, static_argnums=3)
sample_uncond = jax.jit(mb.sample_uncond, static_argnums=2)


class NumpyBank:
    """Reference: appends samples one at a time to per-class and unconditional rings."""

    def __init__(self, num_classes, capacity, capacity_uncond):
        self.images = np.zeros((num_classes, capacity, *SHAPE), np.float32)
        self.count = np.zeros(num_classes, np.int64)
        self.ptr = np.zeros(num_classes, np.int64)
        self.uncond = np.zeros((capacity_uncond, *SHAPE), np.float32)
        self.uncond_count = 0
        self.uncond_ptr = 0

    def push(self, images, labels):
        cap, cap_u = self.images.shape[1], self.uncond.shape[0]
        for image, label in zip(images, labels, strict=True):
            if 0 <= label < self.images.shape[0]:
                self.images[label, self.ptr[label]] = image
                self.ptr[label] = (self.ptr[label] + 1) % cap
                self.count[label] = min(self.count[label] + 1, cap)
            self.uncond[self.uncond_ptr] = image
            self.uncond_ptr = (self.uncond_ptr + 1) % cap_u
            self.uncond_count = min(self.uncond_count + 1, cap_u)


def _assert_same(bank, ref):
    np.testing.assert_array_equal(np.asarray(bank.images), ref.images)
    np.testing.assert_array_equal(np.asarray(bank.count), ref.count)
    np.testing.assert_array_equal(np.asarray(bank.ptr), ref.ptr)
    np.testing.assert_array_equal(np.asarray(bank.uncond), ref.uncond)
    assert int(bank.uncond_count) == ref.uncond_count
    assert int(bank.uncond_ptr) == ref.uncond_ptr


def _batch(rng, batch, num_classes, label_high=None):
    labels = rng.integers(0, num_classes if label_high is None else label_high, size=batch)
    # Unique values per sample; the class is the integer part (checked by sampling tests).
    images = labels[:, None, None] + rng.uniform(0.01, 0.99, size=(batch, *SHAPE))
    return images.astype(np.float32), labels.astype(np.int32)


def test_init_shapes_and_errors():
    bank = mb.init_bank(3, 5, 7, SHAPE, jnp.bfloat16)
    assert bank.images.shape == (3, 5, *SHAPE) and bank.images.dtype == jnp.bfloat16
    assert bank.uncond.shape == (7, *SHAPE)
    assert (bank.num_classes, bank.capacity, bank.capacity_uncond) == (3, 5, 7)
    assert bank.count.dtype == jnp.int32 and not bool(mb.ready(bank, 1))
    bank = push(bank, jnp.full((2, *SHAPE), 1.5), jnp.array([2, 2]))
    out = sample_pos(bank, jax.random.key(0), jnp.array([2]), 3)
    assert out.dtype == jnp.bfloat16 and bool(jnp.all(out == 1.5))
    with pytest.raises(ValueError, match='capacity'):
        mb.init_bank(3, 0, 7, SHAPE)


@pytest.mark.parametrize('batch', [4, 9, 23])
def test_push_matches_sequential_ring_buffers(batch):
    """Random batches (repeated classes, wraparound, a class overflowing its buffer in one
    batch when batch=23, out-of-range null labels) give the sequential result."""
    num_classes, capacity, capacity_uncond = 4, 5, 11
    rng = np.random.default_rng(batch)
    bank = mb.init_bank(num_classes, capacity, capacity_uncond, SHAPE)
    ref = NumpyBank(num_classes, capacity, capacity_uncond)
    chex.clear_trace_counter()
    push_once = jax.jit(chex.assert_max_traces(mb.push, n=1))
    for _ in range(6):
        images, labels = _batch(rng, batch, num_classes, label_high=num_classes + 1)
        bank = push_once(bank, jnp.asarray(images), jnp.asarray(labels))
        ref.push(images, labels)
        _assert_same(bank, ref)
    chex.clear_trace_counter()


def test_counts_saturate_and_ready():
    bank = mb.init_bank(2, 3, 4, SHAPE)
    images = jnp.ones((2, *SHAPE))
    bank = push(bank, images, jnp.array([0, 0]))
    assert bank.count.tolist() == [2, 0] and not bool(mb.ready(bank, 1))
    bank = push(bank, images, jnp.array([1, 0]))
    assert bank.count.tolist() == [3, 1] and int(bank.uncond_count) == 4
    assert bool(mb.ready(bank, 1)) and not bool(mb.ready(bank, 2))
    assert not bool(mb.ready(bank, 1, min_uncond=5))


def test_sampling_returns_valid_entries_of_the_class():
    num_classes, capacity = 5, 8
    rng = np.random.default_rng(0)
    bank = mb.init_bank(num_classes, capacity, 16, SHAPE)
    ref = NumpyBank(num_classes, capacity, 16)
    # Classes 0..3 only, some below capacity; class 4 stays empty.
    images, labels = _batch(rng, 14, 4)
    bank = push(bank, jnp.asarray(images), jnp.asarray(labels))
    ref.push(images, labels)
    query = jnp.array([0, 1, 2, 3, 4, 2], jnp.int32)
    out = np.asarray(sample_pos(bank, jax.random.key(1), query, 50))
    assert out.shape == (6, 50, *SHAPE)
    for g, label in enumerate(query.tolist()):
        if ref.count[label] == 0:
            np.testing.assert_array_equal(out[g], 0.0)
            continue
        valid = ref.images[label, : ref.count[label]].reshape(ref.count[label], -1)
        flat = out[g].reshape(50, -1)
        # Every sample is one of the valid stored entries of its class (class = floor).
        np.testing.assert_array_equal(np.floor(flat), label)
        hits = (flat[:, None, :] == valid[None]).all(-1)
        assert hits.any(1).all()
        if ref.count[label] > 1:  # With 50 draws, more than one entry shows up.
            assert hits.any(0).sum() > 1
    un = np.asarray(sample_uncond(bank, jax.random.key(2), 40)).reshape(40, -1)
    stored = ref.uncond[: ref.uncond_count].reshape(ref.uncond_count, -1)
    assert (un[:, None, :] == stored[None]).all(-1).any(1).all()


def test_sampling_is_uniform_over_valid_entries():
    bank = mb.init_bank(1, 8, 4, (1,))
    bank = push(bank, jnp.arange(3, dtype=jnp.float32)[:, None], jnp.zeros(3, jnp.int32))
    out = np.asarray(sample_pos(bank, jax.random.key(0), jnp.array([0]), 3000)).ravel()
    freq = np.bincount(out.astype(int), minlength=3) / out.size
    np.testing.assert_allclose(freq, 1 / 3, atol=0.04)


def test_empty_uncond_samples_zeros():
    bank = mb.init_bank(2, 3, 4, SHAPE)
    np.testing.assert_array_equal(sample_uncond(bank, jax.random.key(0), 5), 0.0)


def test_bank_is_a_pytree_of_arrays():
    bank = mb.init_bank(2, 3, 4, SHAPE)
    leaves = jax.tree.leaves(bank)
    assert len(leaves) == 6 and all(isinstance(x, jax.Array) for x in leaves)
    rebuilt = jax.tree.unflatten(jax.tree.structure(bank), leaves)
    assert rebuilt.capacity == 3


def test_power_law_alpha_range_and_cdf():
    key = jax.random.key(0)
    np.testing.assert_array_equal(guidance.power_law_alpha(key, (7,), 1.0, 3.0), 1.0)
    n = 20000
    for exponent in (0.0, 1.0, 3.0, 0.999):
        alpha = np.asarray(guidance.power_law_alpha(key, (n,), 4.0, exponent))
        assert alpha.shape == (n,)
        # The output is clipped to [1, 4], so `min >= 1` alone cannot fail. The draws must
        # reach both ends (for these exponents at least ~0.3 % of the mass, ~60 of 20000
        # draws, lies below 1.01 and as much above 3.9) without piling up on them, as a
        # formula that overshoots and is clipped would.
        assert 1.0 <= alpha.min() < 1.01 and 3.9 < alpha.max() <= 4.0, (exponent, alpha.min())
        assert np.mean(alpha == 1.0) < 1e-3 and np.mean(alpha == 4.0) < 1e-3, exponent
        # Empirical CDF at a few points matches the analytic one (sd ~ 0.0035).
        for a in (1.2, 2.0, 3.0):
            expected = float(guidance.power_law_cdf(a, 4.0, exponent))
            assert abs((alpha < a).mean() - expected) < 0.015, (exponent, a)
    # Closed forms: log-uniform median sqrt(4) = 2; exponent 0 is uniform on [1, 4].
    assert float(guidance.power_law_cdf(2.0, 4.0, 1.0)) == pytest.approx(0.5)
    assert float(guidance.power_law_cdf(2.5, 4.0, 0.0)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match='alpha_max'):
        guidance.power_law_alpha(key, (3,), 0.5)


def test_cfg_negative_weight():
    alpha = jnp.array([1.0, 2.0, 3.5])
    np.testing.assert_allclose(
        guidance.cfg_negative_weight(alpha, 16, 32), (np.array([1.0, 2.0, 3.5]) - 1) * 15 / 32
    )
    assert guidance.cfg_negative_weight(1.0, 8, 4) == 0.0
    with pytest.raises(ValueError, match='n_uncond'):
        guidance.cfg_negative_weight(2.0, 8, 0)


def test_dict_samples_follow_the_same_slots_as_array_samples():
    """A bank of dict samples (e.g. cached encoder features) stores and draws each entry of a
    sample together: every key matches the array bank pushed and sampled with the same keys."""
    rng = np.random.default_rng(3)
    shapes = {'a': SHAPE, 'b': (4,)}
    tree_bank = mb.init_bank(3, 4, 6, shapes)
    array_bank = mb.init_bank(3, 4, 6, SHAPE)
    assert tree_bank.sample_shape == {'a': SHAPE, 'b': (4,)}
    assert (tree_bank.num_classes, tree_bank.capacity, tree_bank.capacity_uncond) == (3, 4, 6)
    for _ in range(3):
        images, labels = _batch(rng, 7, 3)
        tree = {'a': images, 'b': images.reshape(7, -1)[:, :4] * 2.0}
        tree_bank = push(tree_bank, tree, jnp.asarray(labels))
        array_bank = push(array_bank, jnp.asarray(images), jnp.asarray(labels))
    key, labels = jax.random.key(5), jnp.array([0, 2, 1], jnp.int32)
    pos, pos_ref = sample_pos(tree_bank, key, labels, 9), sample_pos(array_bank, key, labels, 9)
    np.testing.assert_array_equal(pos['a'], pos_ref)
    np.testing.assert_array_equal(pos['b'], np.asarray(pos_ref).reshape(3, 9, -1)[..., :4] * 2)
    unc, unc_ref = sample_uncond(tree_bank, key, 5), sample_uncond(array_bank, key, 5)
    np.testing.assert_array_equal(unc['a'], unc_ref)
    np.testing.assert_array_equal(unc['b'], np.asarray(unc_ref).reshape(5, -1)[:, :4] * 2)
    with pytest.raises(ValueError, match='bank holds'):
        mb.push(tree_bank, {'a': jnp.zeros((2, *SHAPE))}, jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match='bank holds'):
        mb.push(
            tree_bank, {'a': jnp.zeros((2, 3, 3)), 'b': jnp.zeros((2, 4))}, jnp.zeros(2, jnp.int32)
        )
    with pytest.raises(ValueError, match=r'labels \[3\] differ in batch size'):
        mb.push(
            tree_bank,
            {'a': jnp.zeros((2, *SHAPE)), 'b': jnp.zeros((2, 4))},
            jnp.zeros(3, jnp.int32),
        )
    with pytest.raises(ValueError, match='shape must be'):
        mb.init_bank(3, 4, 6, {'a': 5})
