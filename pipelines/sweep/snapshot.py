"""A grid frozen at an epoch boundary: the loop's state, the engine's model rows and the policies' arrays.

:meth:`GridSnapshot.capture` copies everything (a few K x d arrays) so the training can go on while the
snapshot is written; :meth:`GridSnapshot.restore` puts it back into a fresh trainer, state and policies, after
which :func:`~pipelines.sweep.loop.run_grid` continues with exactly the jobs an uninterrupted run would run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipelines.distributed.engine import GridTrainer, ModelRows
from pipelines.sweep.policies import Policies
from pipelines.sweep.state import GridState

Arrays = dict[str, npt.NDArray[np.generic]]


@dataclass(frozen=True)
class GridSnapshot:
    """Everything needed to continue (or report) a grid from one epoch boundary."""

    state: Arrays  # GridState.to_arrays()
    models: Arrays  # ModelRows.to_arrays()
    policies: Arrays  # Policies.to_arrays()
    jobs: int
    row_passes: int

    @classmethod
    def capture(cls, state: GridState, trainer: GridTrainer, policies: Policies) -> GridSnapshot:
        """Copies of the current state (call at an epoch boundary)."""
        models = {key: np.array(value, copy=True) for key, value in trainer.models.to_arrays().items()}
        return cls(state.to_arrays(), models, policies.to_arrays(), trainer.jobs, trainer.row_passes)

    def grid_state(self) -> GridState:
        """The loop's state as captured (a new object)."""
        return GridState.from_arrays(self.state)

    @property
    def recorded_epoch(self) -> int:
        return int(np.asarray(self.state["progress"])[0])

    @property
    def trained_epoch(self) -> int:
        return int(np.asarray(self.state["progress"])[1])

    def restore(self, trainer: GridTrainer, state: GridState, policies: Policies) -> None:
        """Put the snapshot into ``trainer``, ``state`` and ``policies`` (all fresh for the same grid).

        Raises
        ------
        ValueError
            The snapshot belongs to another grid (rates, seeds or features differ).
        """
        restored = GridState.from_arrays(self.state)
        if (restored.points, restored.seeds, restored.n_features, restored.epochs) != (
                state.points, state.seeds, state.n_features, state.epochs):
            raise ValueError("the snapshot was taken of another grid (points, seeds, features or epochs differ)")
        state.__dict__.update(restored.__dict__)
        trainer.models = ModelRows.from_arrays(self.models)
        trainer.jobs, trainer.row_passes = self.jobs, self.row_passes
        policies.load_arrays(self.policies)

    def to_arrays(self) -> Arrays:
        """One flat mapping (``state.*``, ``models.*``, ``policies.*``, ``counters``)."""
        arrays: Arrays = {"counters": np.asarray([self.jobs, self.row_passes], dtype=np.int64)}
        for prefix, group in (("state", self.state), ("models", self.models), ("policies", self.policies)):
            arrays.update({f"{prefix}.{key}": value for key, value in group.items()})
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Arrays) -> GridSnapshot:
        """Inverse of :meth:`to_arrays`."""
        def group(prefix: str) -> Arrays:
            return {key.removeprefix(prefix): value for key, value in arrays.items() if key.startswith(prefix)}

        jobs, row_passes = (int(value) for value in np.asarray(arrays["counters"]))
        return cls(group("state."), group("models."), group("policies."), jobs, row_passes)
