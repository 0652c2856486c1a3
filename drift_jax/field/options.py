"""Options of the drifting field: `DriftOptions`, their checks and their config block.

The paper's choices are the defaults; `options_from_config` reads the `drift` block of a
config file (`--config.drift.temperatures=...` on the command line).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

KERNELS = ('laplace', 'gaussian')
NORMALIZATIONS = ('both', 'targets', 'none')
LOSS_REDUCTIONS = ('sum', 'mean')
PAPER_TEMPERATURES = (0.02, 0.05, 0.2)


@dataclasses.dataclass(frozen=True)
class DriftOptions:
    """Options of the drifting field (hashable, so it can be a static jit argument).

    Attributes:
      temperatures: kernel temperatures tau; one field per temperature, summed. Paper:
        (0.02, 0.05, 0.2) with scale normalisation; the simple 2-D form uses (0.05,).
      kernel: 'laplace' k = exp(-d / tau) (paper) or 'gaussian' k = exp(-d^2 / (2 tau^2)).
      normalize: 'both' (paper: geometric mean of the softmax over targets and the softmax
        over queries), 'targets' (softmax over targets only) or 'none' (raw kernel).
      self_mask: mask x_i against y_neg_i, so a generated sample does not repel itself.
        None means True when the negatives are the generated batch (y_neg=None), else
        False. With explicit negatives, True masks pairs (i, i) for i < N (the first N
        negatives must then be the queries, as in classifier-free guidance batches).
      scale_dist: divide distances by their weighted mean over the batch and express the
        field in coordinates scaled so that the mean distance is sqrt(D) (paper: on).
      normalize_drift: divide each temperature's field by its RMS before summing (paper:
        on). Off with a single temperature gives the plain mean-shift field.
      block_size: targets per block for the blocked (streaming) form, which never builds
        the N x M matrices; 0 or None chooses automatically (`select_block_size`: dense
        while its matrices are small, blocked beyond).
      affinity_floor: 0 (default) keeps the exact log-space geometric mean. A positive value
        f gives the official release's loss instead: affinities sqrt(max(row softmax *
        column softmax, f)) (the release uses 1e-6), with its self-mask, its single distance
        scale over all pairs and groups and its RMS normalisation (`floored.py`). It needs
        kernel='laplace', normalize='both' and the dense form (block_size 0 or None), and
        the sharded form refuses it.
      loss_reduction: how `drift_loss` reduces the squared error ||x - sg(x + V)||^2 over
        the D coordinates of a sample: 'sum' (default) or 'mean', the official release's,
        which also averages over coordinates. The field is the same; the 'mean' loss and
        its gradient are 1/D of the 'sum' ones, which changes the effect of gradient
        clipping and of the learning rate of plain SGD, and, with several feature sets,
        weighs every set alike instead of in proportion to its D. With Adam and no
        clipping the two train almost identically.
    """

    temperatures: tuple[float, ...] = PAPER_TEMPERATURES
    kernel: str = 'laplace'
    normalize: str = 'both'
    self_mask: bool | None = None
    scale_dist: bool = True
    normalize_drift: bool = True
    block_size: int | None = None
    affinity_floor: float = 0.0
    loss_reduction: str = 'sum'

    def __post_init__(self):
        temps = self.temperatures
        if isinstance(temps, (int, float)):
            temps = (temps,)
        temps = tuple(float(t) for t in temps)
        object.__setattr__(self, 'temperatures', temps)
        floor = self.affinity_floor
        if isinstance(floor, numbers.Real) and not isinstance(floor, bool):
            object.__setattr__(self, 'affinity_floor', float(floor))
        validate_options(self)


def validate_options(opts: DriftOptions) -> None:
    """Raises ValueError naming the bad value and the valid choices."""
    if not opts.temperatures:
        raise ValueError('drift.temperatures is empty; give at least one, e.g. (0.05,).')
    for t in opts.temperatures:
        if not t > 0 or t != t or t == float('inf'):
            raise ValueError(
                f'drift.temperatures must all be positive and finite, got {opts.temperatures}.'
            )
    if opts.kernel not in KERNELS:
        raise ValueError(f'drift.kernel={opts.kernel!r} is unknown; choose one of {KERNELS}.')
    if opts.normalize not in NORMALIZATIONS:
        raise ValueError(
            f'drift.normalize={opts.normalize!r} is unknown; choose one of {NORMALIZATIONS}.'
        )
    if opts.loss_reduction not in LOSS_REDUCTIONS:
        raise ValueError(
            f'drift.loss_reduction={opts.loss_reduction!r} is unknown; choose one of '
            f"{LOSS_REDUCTIONS} ('mean' is the official release's)."
        )
    bs = opts.block_size
    if bs is not None and (isinstance(bs, bool) or not isinstance(bs, numbers.Integral)):
        raise ValueError(
            f'drift.block_size={bs!r} must be an integer number of targets per block, or '
            '0/None for the automatic choice.'
        )
    if bs is not None and bs < 0:
        raise ValueError(
            f'drift.block_size={bs} must be a positive number of targets per block, or '
            '0/None for the automatic choice.'
        )
    _validate_floor(opts)


def _validate_floor(opts: DriftOptions) -> None:
    """A floor must be finite and >= 0; a positive one fixes the kernel, the normalisation
    and the form to the official release's (the only combination it defines)."""
    floor = opts.affinity_floor
    if isinstance(floor, bool) or not isinstance(floor, numbers.Real):
        raise ValueError(
            f'drift.affinity_floor={floor!r} must be a number: 0 for the exact field, or a '
            'positive floor such as the official 1e-6.'
        )
    if not math.isfinite(floor) or floor < 0:
        raise ValueError(
            f'drift.affinity_floor={floor!r} must be finite and >= 0: 0 for the exact field, '
            'or a positive floor such as the official 1e-6.'
        )
    if floor == 0:
        return
    if opts.kernel != 'laplace':
        raise ValueError(
            f'drift.affinity_floor={floor:g} reproduces the official loss, whose kernel is '
            f"Laplace; drift.kernel={opts.kernel!r} has no floored form. Use kernel='laplace' "
            'or affinity_floor=0.'
        )
    if opts.normalize != 'both':
        raise ValueError(
            f'drift.affinity_floor={floor:g} floors the product of the softmax over targets '
            f'and the softmax over queries; drift.normalize={opts.normalize!r} has no such '
            "product. Use normalize='both' or affinity_floor=0."
        )
    if opts.block_size:
        raise ValueError(
            f'drift.affinity_floor={floor:g} is computed by the dense form only, but '
            f'drift.block_size={opts.block_size} asks for the blocked form. Set '
            'drift.block_size=0 (with a floor the automatic choice is always dense) or '
            'affinity_floor=0.'
        )


def options_from_config(drift_config: Any) -> DriftOptions:
    """Builds DriftOptions from a `config.drift` ConfigDict (or a dict)."""
    cfg = dict(drift_config)
    known = {f.name for f in dataclasses.fields(DriftOptions)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f'Unknown drift option(s) {unknown}; valid options: {sorted(known)}.')
    if 'temperatures' in cfg and not isinstance(cfg['temperatures'], (int, float)):
        cfg['temperatures'] = tuple(cfg['temperatures'])
    return DriftOptions(**cfg)
