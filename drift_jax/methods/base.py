"""The interface between the trainer and a method (what is learned).

A method builds its networks, states the losses that update each of them, samples with a
number of function evaluations (NFE) and may log its own evaluation figures. The loop in
`train.py` owns everything else (sharded state, the jitted step, EMA, checkpoints, resume,
SIGTERM, NaN stops, metrics, plots) and never branches on a method's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import ml_collections
import numpy as np
import optax

from drift_jax import mesh as mesh_lib

# loss(params, extra, key, batch) -> (scalar loss, (stats dict, new extra)); `params` maps
# every network's name to its parameters.
LossFn = Callable[[dict[str, Any], Any, jax.Array, Any], tuple[jax.Array, tuple[dict, Any]]]


@dataclasses.dataclass(frozen=True)
class Update:
    """One optimiser update inside the train step: `loss` differentiated with respect to
    the parameters of `network` only, then that network's optimiser applied.

    A step runs a method's updates in order, each seeing the parameters and `extra` state
    left by the previous one (a GAN: the discriminator's update, then the generator's).
    """

    network: str
    loss: LossFn


def check_int(value, name: str, low: int = 1, high: int | None = None) -> None:
    """Raises ValueError naming `name` unless `value` is an int (not a bool) in [low, high]
    (no upper bound when high is None): the integer settings of the methods' configs."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if ok and (high is None or value <= high):
        return
    if high is not None:
        wanted = f'an integer in [{low}, {high}]'
    else:
        wanted = 'a positive integer' if low == 1 else f'an integer >= {low}'
    raise ValueError(f'{name} must be {wanted}, got {value!r}.')


class Method:
    """Base class of the methods in `drift_jax.methods.METHODS`.

    Subclasses set `name`, implement `validate`, `__init__`, `init`, `updates` and
    `sample`, and override the rest where the default does not fit.

    Attributes:
      name: the `config.method` value that selects the method.
      task_kinds: the task kinds it trains on ('points', 'images').
      generative: False for methods that train no sampler (a feature encoder); the loop
        then logs only the method's own `evaluate` figures.
      host_batch_size: real examples per step the task sends from the host (images); None
        when the step draws its data itself (toys) or needs none.
    """

    name: ClassVar[str] = ''
    task_kinds: ClassVar[tuple[str, ...]] = ('points', 'images')
    generative: ClassVar[bool] = True
    host_batch_size: int | None = None

    @staticmethod
    def validate(config: ml_collections.ConfigDict, task_kind: str) -> None:
        """Checks the method's settings; raises ValueError naming the value (no compiles)."""

    def __init__(self, config: ml_collections.ConfigDict, task: Any, mesh: jax.sharding.Mesh):
        self.config, self.task, self.mesh = config, task, mesh

    def init(self, key: jax.Array) -> tuple[dict[str, Any], Any]:
        """(params: network name -> parameters, extra: method-held state, e.g. a bank)."""
        raise NotImplementedError

    def optimizers(self, networks: tuple[str, ...]) -> dict[str, optax.GradientTransformation]:
        """Network name -> optimiser. Default: `config.optim` for every network."""
        tx = mesh_lib.make_optimizer(self.config.optim, self.config.train.steps)
        return dict.fromkeys(networks, tx)

    def updates(self) -> tuple[Update, ...]:
        """The losses of one train step, applied in order."""
        raise NotImplementedError

    def warm_start(self, state: Any) -> Any:
        """Adjusts a freshly initialised train state before step 1 (default: unchanged)."""
        return state

    def sample(
        self, params: dict[str, Any], key: jax.Array, n: int, labels=None, **options
    ) -> np.ndarray:
        """n samples in training coordinates ([n, D] points or [n, H, W, C] images)."""
        raise NotImplementedError

    def nfe(self, **options) -> int:
        """Network evaluations per sample of `sample` with these options (default 1)."""
        del options
        return 1

    def diagnose(self, values: dict[str, float]) -> str | None:
        """Called with every step's metrics (host floats): a sentence saying why the run
        cannot go on and what to try (e.g. a discriminator that wins outright), which stops
        it like a NaN does, or None (the default)."""
        del values
        return None

    def evaluate(self, params: dict[str, Any], step: int) -> dict[str, float]:
        """The method's own figures at an evaluation, beside the task's (default none)."""
        del params, step
        return {}
