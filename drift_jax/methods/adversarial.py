"""Pieces shared by the adversarial methods (gan, ddgan): losses, R1, divergence watch.

Non-saturating GAN losses on discriminator logits l (D = sigmoid(l)):

    discriminator:  E_real softplus(-l) + E_fake softplus(l)   (= -log D(real) - log(1 - D(fake)))
    generator:      E_fake softplus(-l)                         (= -log D(fake))

R1 (Mescheder et al.): (gamma / 2) E_real || grad_x l(x) ||^2, on real samples only.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from drift_jax.methods.base import check_int


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """Non-saturating discriminator loss: mean softplus(-real) + mean softplus(fake)."""
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def generator_loss(fake_logits: jax.Array) -> jax.Array:
    """Non-saturating generator loss: mean softplus(-fake) = -mean log D(fake)."""
    return jnp.mean(jax.nn.softplus(-fake_logits))


def r1_penalty(logits_fn: Callable[[jax.Array], jax.Array], x_real: jax.Array) -> jax.Array:
    """E || grad_x logits_fn(x) ||^2 over real samples x [B, ...] (logits_fn: [B, ...] -> [B]).

    Each logit depends on its own sample only (no normalisation across the batch), so the
    gradient of the summed logits gives every sample's gradient in one backward pass.
    """
    grads = jax.grad(lambda x: jnp.sum(logits_fn(x)))(x_real)
    return jnp.mean(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=-1))


def discriminator_stats(real_logits: jax.Array, fake_logits: jax.Array) -> dict[str, jax.Array]:
    """'d_real' and 'd_fake': the discriminator's mean probability that a sample is real."""
    return {
        'd_real': jnp.mean(jax.nn.sigmoid(real_logits)),
        'd_fake': jnp.mean(jax.nn.sigmoid(fake_logits)),
    }


def discriminator_objective(
    logits_fn: Callable[[jax.Array], jax.Array], real: jax.Array, fake: jax.Array, gamma: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, stats) of one discriminator update: the non-saturating loss on real [B, ...]
    and fake [B, ...] samples plus (gamma / 2) R1 on the reals (when gamma > 0); stats
    'd_real', 'd_fake' and 'r1'. `logits_fn` maps samples to logits [B]."""
    real_logits, fake_logits = logits_fn(real), logits_fn(fake)
    loss = discriminator_loss(real_logits, fake_logits)
    stats = discriminator_stats(real_logits, fake_logits)
    if gamma:
        r1 = r1_penalty(logits_fn, real)
        loss = loss + 0.5 * gamma * r1
        stats['r1'] = r1
    return loss, stats


def validate_adversarial(block: ml_collections.ConfigDict, name: str) -> None:
    """Checks the settings every adversarial method shares (ValueError naming the value)."""
    if not block.r1_gamma >= 0:
        raise ValueError(f'{name}.r1_gamma must be >= 0, got {block.r1_gamma}.')
    if not block.disc_learning_rate >= 0:
        raise ValueError(
            f'{name}.disc_learning_rate must be >= 0 (0: optim.learning_rate), '
            f'got {block.disc_learning_rate}.'
        )
    check_int(block.stop_patience, f'{name}.stop_patience', 0)


class DivergenceWatch:
    """Stops a run whose discriminator wins outright: D(real) > 0.99 and D(fake) < 0.01
    (means over the batch) for `patience` consecutive steps (0: never).

    Such a discriminator gives the generator vanishing, uninformative gradients; the run
    rarely recovers. Host-side state: the count restarts when a run resumes.
    """

    def __init__(self, patience: int, name: str):
        self.patience, self.name, self.count = int(patience), name, 0

    def __call__(self, values: dict[str, float]) -> str | None:
        if not self.patience or 'd_real' not in values:
            return None
        won = values['d_real'] > 0.99 and values['d_fake'] < 0.01
        self.count = self.count + 1 if won else 0
        if self.count < self.patience:
            return None
        return (
            f'the discriminator has won outright for {self.count} steps '
            f'(D(real) = {values["d_real"]:.4f}, D(fake) = {values["d_fake"]:.4f}). Try a '
            f'larger {self.name}.r1_gamma, a lower {self.name}.disc_learning_rate or '
            f'optim.learning_rate, or set {self.name}.stop_patience=0 to train on anyway.'
        )
