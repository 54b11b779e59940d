"""Optional experiment trackers (TensorBoard, Weights & Biases) fed the same records as metrics.jsonl.

Neither is a dependency: asking for one that is not installed is a clear error before the run starts.
W&B honours its own environment (WANDB_MODE=offline works with no account or network).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from gptforge.errors import UserError
from gptforge.run_dir import RunDir


def check_trackers(tensorboard: bool, wandb: bool) -> None:
    """Fail early, before a run directory exists, when a requested tracker is not installed."""
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard")
    if wandb and importlib.util.find_spec("wandb") is None:
        raise UserError("--wandb needs the wandb package: pip install wandb (WANDB_MODE=offline works offline)")


class Trackers:
    """Numbers of each record go to every tracker that was asked for, keyed by the record's kind."""

    def __init__(self, run: RunDir, config: dict[str, Any], tensorboard: bool, wandb: bool) -> None:
        check_trackers(tensorboard, wandb)
        self._tensorboard = None
        self._wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(run.tensorboard_dir))
        if wandb:
            import wandb as wandb_module

            self._wandb = wandb_module.init(project="gptforge", name=run.path.name, dir=str(run.path),
                                            config=config, resume="allow", id=run.path.name)

    def log(self, kind: str, step: int, record: dict[str, Any]) -> None:
        values = {f"{kind}/{k}": v for k, v in record.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        if self._tensorboard is not None:
            for name, value in values.items():
                self._tensorboard.add_scalar(name, value, step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()
