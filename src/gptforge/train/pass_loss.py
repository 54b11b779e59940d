"""The target-loss rule: the mean training loss over the last full pass of the data, and its milestones.

One batch's loss says little about the corpus: with the sequential sampler the loss rises and falls with
the position in each epoch, and the easiest batch of an epoch can fall below a target long before the
rest do. So `--target-loss` is judged on the mean over the last `steps` optimizer steps, where `steps`
is one pass over the training tokens. With the sequential sampler any run of that many consecutive
steps serves every window of the data exactly once (when the epoch is a whole number of steps; at most
one step's worth twice otherwise); with random windows it serves as many tokens as the corpus holds.

The milestones (the first step whose single batch fell below the target, and the step whose pass mean
did) are kept with the training time, tokens and epochs at that moment, so the summary can say both.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

# Losses are summed as integers in units of 2**-64: the sum is exact and independent of order, so it can be kept
# up to date in O(1) a step (a pass can be hundreds of thousands of steps on a large corpus) and a resumed run,
# which rebuilds it from the saved losses, computes the same bits.
SCALE = 2**64


def _scaled(loss: float) -> int:
    return round(loss * SCALE)


@dataclass
class Milestone:
    step: int  # optimizer steps done, this one included
    loss: float  # the batch's loss, or the pass mean
    training_s: float  # training time so far, without the first step of each session
    tokens: int  # tokens seen, all processes together
    epoch: float  # passes over the data so far

    def describe(self) -> str:
        return (f"step {self.step}, after {self.training_s:.1f}s of training, {self.tokens:,} tokens, "
                f"{self.epoch:.2f} epochs")


class PassLoss:
    """The losses of the last `steps` optimizer steps, their mean, and when they crossed a target."""

    def __init__(self, steps: int, target: float | None) -> None:
        self.steps = max(1, steps)
        self.target = target
        self._losses: deque[float] = deque(maxlen=self.steps)
        self._sum = 0  # of _scaled(loss) over _losses
        self.best_mean = math.inf
        self.first_batch_below: Milestone | None = None
        self.reached: Milestone | None = None

    def mean(self) -> float | None:
        """The mean over the last full pass; None until the run has taken a pass's worth of steps."""
        if len(self._losses) < self.steps:
            return None
        return self._sum / (SCALE * self.steps)

    def add(self, loss: float, at: Milestone) -> float | None:
        """Record one step's loss (`at` describes the moment); return the pass mean if there is one yet."""
        if len(self._losses) == self.steps:
            self._sum -= _scaled(self._losses[0])
        self._losses.append(loss)
        self._sum += _scaled(loss)
        mean = self.mean()
        if mean is not None:
            self.best_mean = min(self.best_mean, mean)
        if self.target is not None:
            if self.first_batch_below is None and loss < self.target:
                self.first_batch_below = at
            if self.reached is None and mean is not None and mean < self.target:
                self.reached = Milestone(**{**asdict(at), "loss": mean})
        return mean

    def report(self) -> str | None:
        """One line for the summary: whether the target was reached, and when one batch first went below."""
        if self.target is None:
            return None
        one_batch = (f"one batch first below at {self.first_batch_below.describe()} (loss "
                     f"{self.first_batch_below.loss:.4f})" if self.first_batch_below else "no single batch below it")
        if self.reached is not None:
            return (f"target loss {self.target} reached: mean over the last pass of the data {self.reached.loss:.4f} "
                    f"at {self.reached.describe()}; {one_batch}")
        best = f"best pass mean {self.best_mean:.4f}" if math.isfinite(self.best_mean) else \
            f"fewer steps than one pass of the data ({self.steps})"
        return f"target loss {self.target} NOT reached: {best}; {one_batch}"

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self._losses), "best_mean": self.best_mean, "target": self.target,
                "first_batch_below": asdict(self.first_batch_below) if self.first_batch_below else None,
                "reached": asdict(self.reached) if self.reached else None}

    def load_state_dict(self, state: dict[str, Any], step_offset: int = 0) -> None:
        """A resume with another batch or accumulation changes the pass's length: keep the newest losses.
        A resume with another target keeps the losses but not the old target's milestones. `step_offset` moves
        the milestones' steps (1 for checkpoints that numbered steps from 0)."""
        self._losses.clear()
        self._losses.extend(float(loss) for loss in state["losses"][-self.steps:])
        self._sum = sum(_scaled(loss) for loss in self._losses)
        self.best_mean = float(state["best_mean"])
        if state["target"] != self.target:  # milestones of another target mean nothing for this one
            return
        self.first_batch_below, self.reached = (
            Milestone(**{**saved, "step": saved["step"] + step_offset}) if saved else None
            for saved in (state["first_batch_below"], state["reached"]))
