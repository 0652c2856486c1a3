"""Device-resident memory bank of real samples for class-conditional drifting.

Per-class ring buffers plus one unconditional ring buffer, held as a pytree of plain arrays:
pushing and sampling are pure, jittable functions, and the bank checkpoints like any state.
A sample is one array (an image) or a dict of arrays (e.g. the feature sets of a frozen
encoder, so real samples are encoded once, when they are pushed, not every time they are drawn).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class MemoryBank:
    """Ring buffers of real samples; every field is an array (capacities are read from shapes).

    Attributes:
      images: per-class buffers, ``[num_classes, capacity, *shape]``, or a dict name -> such an
        array when a sample is a dict of arrays (all with the same leading axes).
      count: valid entries per class, int32 [num_classes]; saturates at `capacity`. Entries
        are written from slot 0 upward, so slots [0, count) are exactly the valid ones.
      ptr: next slot to write per class, int32 [num_classes], in [0, capacity).
      uncond: buffer of samples of any class, ``[capacity_uncond, *shape]`` (or a dict, as
        `images`).
      uncond_count: valid entries of `uncond`, int32 scalar, saturating at capacity_uncond.
      uncond_ptr: next slot of `uncond` to write, int32 scalar.
    """

    images: Any
    count: jax.Array
    ptr: jax.Array
    uncond: Any
    uncond_count: jax.Array
    uncond_ptr: jax.Array

    @property
    def num_classes(self) -> int:
        return self.count.shape[0]

    @property
    def capacity(self) -> int:
        return jax.tree_util.tree_leaves(self.images)[0].shape[1]

    @property
    def capacity_uncond(self) -> int:
        return jax.tree_util.tree_leaves(self.uncond)[0].shape[0]

    @property
    def sample_shape(self) -> Any:
        """Shape of one sample: a tuple, or a dict name -> tuple for dict samples."""
        return jax.tree_util.tree_map(lambda a: tuple(a.shape[1:]), self.uncond)


def _is_shape(shape: Any) -> bool:
    return isinstance(shape, Sequence) and not isinstance(shape, str)


def init_bank(
    num_classes: int,
    capacity: int,
    capacity_uncond: int,
    shape: Sequence[int] | Mapping[str, Sequence[int]],
    dtype=jnp.float32,
) -> MemoryBank:
    """An empty bank holding samples of shape `shape` (e.g. (H, W, C)) stored as `dtype`.

    `shape` may also be a dict name -> shape (e.g. {'raw': (1, 784), 'global': (1, 64)}):
    each sample is then a dict of arrays of those shapes, and every buffer a dict too.
    `dtype` is float32 or bfloat16 (bfloat16 halves the memory; samples come back in it).
    """
    for name, value in (
        ('num_classes', num_classes),
        ('capacity', capacity),
        ('capacity_uncond', capacity_uncond),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f'{name} must be a positive integer, got {value!r}.')
    if isinstance(shape, Mapping):
        if not shape or not all(_is_shape(v) for v in shape.values()):
            raise ValueError(
                f'shape must be a tuple of ints or a non-empty dict of such tuples, got {shape!r}.'
            )
        shapes = {str(k): tuple(int(s) for s in v) for k, v in shape.items()}
    elif _is_shape(shape):
        shapes = tuple(int(s) for s in shape)
    else:
        raise ValueError(f'shape must be a tuple of ints or a dict of such tuples, got {shape!r}.')
    zeros = lambda lead: jax.tree_util.tree_map(  # noqa: E731
        lambda s: jnp.zeros((*lead, *s), dtype), shapes, is_leaf=lambda s: isinstance(s, tuple)
    )
    return MemoryBank(
        images=zeros((num_classes, capacity)),
        count=jnp.zeros((num_classes,), jnp.int32),
        ptr=jnp.zeros((num_classes,), jnp.int32),
        uncond=zeros((capacity_uncond,)),
        uncond_count=jnp.zeros((), jnp.int32),
        uncond_ptr=jnp.zeros((), jnp.int32),
    )


def push(bank: MemoryBank, images: jax.Array, labels: jax.Array) -> MemoryBank:
    """Writes a batch into the bank, as if the samples were appended one by one in order.

    Sample b goes to slot (ptr[c] + r_b) mod capacity of its class c = labels[b], where r_b is
    the number of earlier samples of class c in this batch (one-hot cumsum); every sample also
    goes to the unconditional buffer. When a batch holds more samples of one class than the
    capacity, only the last `capacity` of them are written (they are the ones that would
    survive sequential writes), which keeps the scatter free of duplicate indices.
    Labels outside [0, num_classes) (e.g. a null label) go only to the unconditional buffer.

    Args:
      bank: the current bank.
      images: ``[B, *shape]``, any float dtype (cast to the bank's dtype); a dict of such arrays
        (same keys and per-sample shapes as the bank's) for a bank of dict samples.
      labels: int [B].

    Returns:
      The updated bank (same shapes and dtypes, so a jitted caller does not retrace).
    """
    got = jax.tree_util.tree_map(lambda a: tuple(a.shape[1:]), images)
    if jax.tree_util.tree_structure(images) != jax.tree_util.tree_structure(bank.uncond) or (
        got != bank.sample_shape
    ):
        raise ValueError(f'pushed samples have shape {got}, the bank holds {bank.sample_shape}.')
    batch = labels.shape[0]
    if any(a.shape[0] != batch for a in jax.tree_util.tree_leaves(images)):
        raise ValueError(f'pushed samples and labels [{batch}] differ in batch size.')
    labels = labels.astype(jnp.int32)
    k, cap = bank.num_classes, bank.capacity

    onehot_bk = (labels[:, None] == jnp.arange(k)[None, :]).astype(jnp.int32)
    n_k = onehot_bk.sum(axis=0)
    rank_b = jnp.sum((jnp.cumsum(onehot_bk, axis=0) - onehot_bk) * onehot_bk, axis=1)
    valid_b = (labels >= 0) & (labels < k)
    safe_labels = jnp.where(valid_b, labels, 0)
    keep_b = valid_b & (rank_b >= n_k[safe_labels] - cap)
    slot_b = (bank.ptr[safe_labels] + rank_b) % cap
    row_b = jnp.where(keep_b, safe_labels, k)  # Row k is out of bounds: dropped.
    new_images = jax.tree_util.tree_map(
        lambda buf, x: buf.at[row_b, slot_b].set(x.astype(buf.dtype), mode='drop'),
        bank.images,
        images,
    )

    cap_u = bank.capacity_uncond
    idx_b = jnp.arange(batch)
    slot_u = (bank.uncond_ptr + idx_b) % cap_u
    slot_u = jnp.where(idx_b >= batch - cap_u, slot_u, cap_u)
    new_uncond = jax.tree_util.tree_map(
        lambda buf, x: buf.at[slot_u].set(x.astype(buf.dtype), mode='drop'), bank.uncond, images
    )

    return MemoryBank(
        images=new_images,
        count=jnp.minimum(bank.count + n_k, cap).astype(jnp.int32),
        ptr=((bank.ptr + n_k) % cap).astype(jnp.int32),
        uncond=new_uncond,
        uncond_count=jnp.minimum(bank.uncond_count + batch, cap_u).astype(jnp.int32),
        uncond_ptr=((bank.uncond_ptr + batch) % cap_u).astype(jnp.int32),
    )


def sample_pos(bank: MemoryBank, key: jax.Array, labels: jax.Array, n: int) -> Any:
    """n samples per label, uniform with replacement over that class's valid entries.

    Args:
      bank: the bank.
      key: PRNG key.
      labels: int [G], each in [0, num_classes).
      n: samples per label (static).

    Returns:
      ``[G, n, *shape]`` in the bank's dtype (a dict of such for dict samples); all zeros for a
      class with no entries yet (check `ready` before training).
    """
    labels = labels.astype(jnp.int32)
    count_g = bank.count[labels]
    idx_gn = jax.random.randint(key, (labels.shape[0], n), 0, jnp.maximum(count_g, 1)[:, None])

    def take(buf):
        out = buf[labels[:, None], idx_gn]
        has_any = (count_g > 0).reshape((-1,) + (1,) * (out.ndim - 1))
        return jnp.where(has_any, out, jnp.zeros_like(out))

    return jax.tree_util.tree_map(take, bank.images)


def sample_uncond(bank: MemoryBank, key: jax.Array, n: int) -> Any:
    """n samples uniform with replacement over the unconditional buffer: ``[n, *shape]`` (a dict
    of such for dict samples). All zeros while the buffer is empty.
    """
    idx = jax.random.randint(key, (n,), 0, jnp.maximum(bank.uncond_count, 1))
    return jax.tree_util.tree_map(
        lambda buf: jnp.where(bank.uncond_count > 0, buf[idx], jnp.zeros_like(buf[idx])),
        bank.uncond,
    )


def ready(bank: MemoryBank, min_count: int, min_uncond: int | None = None) -> jax.Array:
    """Boolean scalar: every class holds >= min_count entries and the unconditional buffer
    >= min_uncond (default min_count). Counts saturate at the capacities, so a minimum above
    a capacity is never reached."""
    min_uncond = min_count if min_uncond is None else min_uncond
    return jnp.all(bank.count >= min_count) & (bank.uncond_count >= min_uncond)
