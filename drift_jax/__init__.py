"""drift_jax: Drifting Models (one-step generative models) in JAX and Flax."""
