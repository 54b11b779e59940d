"""`python tests/distributed_probe.py PROBE gptforge-args...` under torchrun: gptforge train with a probe inside.

- `sync`: prints, per optimizer step of rank 0, how many DDP gradient buckets were all-reduced and the
  gradient-sync switches set on the FSDP2 model, as `SYNC {"step": s, "ddp_buckets": n, "fsdp_sync": [...]}`.
- `nan-on-rank-1`: rank 1's loss turns NaN from its third training forward on; rank 0's stays finite.
"""

from __future__ import annotations

import json
import os
import sys

from gptforge import model
from gptforge.cli import main
from gptforge.train import distributed, trainer


def probe_sync() -> None:
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6: no FSDP2, so only DDP is probed
        FSDPModule = None

    seen: dict[str, list] = {"ddp_buckets": [], "fsdp_sync": []}

    def counting_hook(state, bucket):
        seen["ddp_buckets"].append(1)
        return allreduce_hook(state, bucket)

    wrap_model = distributed.wrap_model

    def wrap_and_watch(*args, **kwargs):
        wrapped = wrap_model(*args, **kwargs)
        if args[1] == "ddp":
            wrapped.parallel.register_comm_hook(None, counting_hook)
        return wrapped

    set_sync = FSDPModule.set_requires_gradient_sync if FSDPModule is not None else None

    def record_sync(self, requires_gradient_sync, *args, **kwargs):
        seen["fsdp_sync"].append(requires_gradient_sync)
        return set_sync(self, requires_gradient_sync, *args, **kwargs)

    train_step = trainer.Trainer.train_step

    def step_and_report(self):
        for events in seen.values():
            events.clear()
        stats = train_step(self)
        if self.rank == 0:
            print("SYNC " + json.dumps({"step": stats.step, "ddp_buckets": len(seen["ddp_buckets"]),
                                        "fsdp_sync": seen["fsdp_sync"]}), flush=True)
        return stats

    distributed.wrap_model = wrap_and_watch
    if FSDPModule is not None:
        FSDPModule.set_requires_gradient_sync = record_sync
    trainer.Trainer.train_step = step_and_report


def probe_nan_on_rank_1() -> None:
    forward = model.GPT.forward
    training_forwards = [0]

    def forward_turning_nan(self, idx, targets=None, **kwargs):
        logits, loss = forward(self, idx, targets, **kwargs)
        if self.training and loss is not None and os.environ.get("RANK") == "1":
            training_forwards[0] += 1
            if training_forwards[0] >= 3:
                loss = loss * float("nan")
        return logits, loss

    model.GPT.forward = forward_turning_nan


if __name__ == "__main__":
    {"sync": probe_sync, "nan-on-rank-1": probe_nan_on_rank_1}[sys.argv[1]]()
    sys.exit(main(sys.argv[2:]))
