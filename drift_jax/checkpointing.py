"""Orbax checkpoints of the whole train state under `<workdir>/checkpoints`.

Saves are asynchronous and atomic (orbax writes to a temporary folder and renames it when
complete), so a crash or Ctrl-C never leaves a half-written checkpoint that a resume picks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` holding one item, the train state pytree."""

    def __init__(self, directory: str, max_to_keep: int = 3, use_async: bool = True):
        directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=use_async
        )
        self.directory = directory
        self._manager = ocp.CheckpointManager(directory, options=options)

    def latest_step(self) -> int | None:
        """Newest complete checkpoint step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, force: bool = False) -> bool:
        """Starts saving `state` at `step` (asynchronous); returns whether a save started."""
        try:
            return self._manager.save(
                step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=force
            )
        except OSError as e:  # disk full, unwritable folder: say where, keep what exists
            raise OSError(
                e.errno,
                f'Saving the checkpoint of step {step} in {self.directory} '
                f'failed: {e.strerror or e}. Earlier checkpoints are kept: '
                f'{self.all_steps()}.',
            ) from e

    def restore(
        self,
        abstract_state: Any,
        step: int | None = None,
        legacy: tuple[Any, Callable[[Any], Any]] | None = None,
    ) -> tuple[Any, int] | None:
        """Restores into the structure, dtypes and shardings of `abstract_state`.

        Tries `step` (default: newest) and, if that checkpoint is damaged, each older one in
        turn with a warning naming the damaged one. `legacy` = (abstract state of an older
        layout, function converting a state of that layout to the current one): a
        checkpoint that does not match `abstract_state` but matches the older layout is read
        and converted. Returns (state, step) or None when there is no checkpoint.
        """
        steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
        for s in steps:
            try:
                return self._restore_one(s, abstract_state), s
            except Exception as e:  # noqa: BLE001 - any damage means "try the previous one"
                error = e
            if legacy is not None:
                try:
                    state = legacy[1](self._restore_one(s, legacy[0]))
                    logging.warning(
                        'Checkpoint at step %d in %s has the layout of an older '
                        'drift_jax (one network); read and converted.',
                        s,
                        self.directory,
                    )
                    return state, s
                except Exception:  # noqa: BLE001, S110 - report the first error below
                    pass
            if step is not None:
                raise error
            logging.warning(
                'Checkpoint at step %d in %s is damaged or unreadable (%s: %s);'
                ' trying an older one.',
                s,
                self.directory,
                type(error).__name__,
                error,
            )
        if steps:
            raise RuntimeError(
                f'No readable checkpoint in {self.directory} (tried {steps}). '
                'A checkpoint of another method, network size or drift_jax '
                'version does not fit this config: check config.json.'
            )
        return None

    def _restore_one(self, step: int, abstract_state: Any) -> Any:
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )
        return restored['state']

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are complete."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
