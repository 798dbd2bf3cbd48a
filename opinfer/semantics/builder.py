"""Building a program op by op (the model programs use it)."""

from __future__ import annotations

import numpy as np

from opinfer.semantics.ops import PREV, SAME, WEIGHT, Op, Slot, dim, ref, width_for


class ProgramBuilder:
    """Collects ops and weight tensors; each call returns the Slot that reads its result."""

    def __init__(self):
        self.ops: list[Op] = []
        self.weights: list[np.ndarray] = []
        self.widths: list[int] = []

    def weight(self, values) -> Slot:
        """A weight tensor (a 1-D array becomes a column), at the narrowest packed width."""
        values = np.asarray(values, dtype=np.int64)
        if values.ndim == 1:
            values = values.reshape(-1, 1)
        self.weights.append(values)
        self.widths.append(width_for(values))
        r, c = values.shape
        return Slot(ref(WEIGHT, len(self.weights) - 1), dim(r), dim(c), self.widths[-1])

    def op(self, code: int, rows: int, cols: int, slots, params=()) -> Slot:
        self.ops.append(Op(code, rows, cols, tuple(slots), tuple(int(p) for p in params)))
        return Slot(ref(SAME, len(self.ops) - 1), rows, cols)

    def prev(self, index: int, rows: int, cols: int) -> Slot:
        """Op `index` of the previous step, with its shape seen from this step."""
        return Slot(ref(PREV, index), rows, cols)
