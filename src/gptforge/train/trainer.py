"""The training loop: `Trainer.train_step` is one optimizer step, `Trainer.fit` runs steps until a stop rule.

The trainer owns the optimizer, the loss scaler, the counters and every piece of state a checkpoint needs, so a
run stopped anywhere resumes to the same bits. It is built from a config, a model, a Runtime and a sampler
(session.py does that for a run; bench.py for a timing), and knows no file names: checkpoints go to a RunDir.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptforge import hellaswag
from gptforge.checkpoint import (
    capture_rng_state,
    restore_rng_state,
)
from gptforge.config import RunConfig
from gptforge.data import RandomSampler, SequentialSampler
from gptforge.device import Precision, Runtime, configure_matmul_precision, memory_gb
from gptforge.errors import UserError
from gptforge.generate import SamplingSettings, generate_text
from gptforge.hellaswag import Example
from gptforge.model import GPT, vocabulary_loss
from gptforge.run_dir import RunDir
from gptforge.tokenizer import Tokenizer
from gptforge.train import distributed
from gptforge.train.checkpoint_writer import CheckpointWriter
from gptforge.train.optim import build_optimizer, learning_rate_at
from gptforge.train.pass_loss import Milestone, PassLoss
from gptforge.train.run_log import RunLog


class NonFiniteLoss(Exception):
    """A NaN or inf appeared in the loss or the gradient norm; the optimizer step was not taken."""


@dataclass
class StepStats:
    step: int  # optimizer steps done, this one included: "step N" everywhere (logs, metrics, checkpoints)
    loss: float  # mean training loss over the step's micro-batches
    grad_norm: float
    lr: float
    tokens: int  # tokens processed by this step, all processes together
    seconds: float


class Trainer:
    # seconds from an arbitrary origin; every duration the trainer measures reads it, so a test can drive
    # the time budget and the timing figures with a fake clock instead of the machine's speed
    clock: Callable[[], float] = staticmethod(time.perf_counter)

    def __init__(self, config: RunConfig, model: GPT, runtime: Runtime, sampler: SequentialSampler | RandomSampler,
                 *, val_tokens: np.ndarray | None = None, tokenizer: Tokenizer | None = None, run: RunDir | None = None,
                 log: RunLog | None = None, hellaswag: list[Example] | None = None) -> None:
        """`model` is on runtime.device and initialised; without `tokenizer` there are no samples, without `run`
        no checkpoints, without `val_tokens` no evaluation, without `hellaswag` examples no HellaSwag score."""
        self.config = config
        self.runtime = runtime
        self.sampler = sampler
        self.val_tokens = val_tokens if val_tokens is not None else np.zeros(0, dtype=np.uint32)
        self.tokenizer = tokenizer
        self.hellaswag = hellaswag
        self.run = run
        self.log = log if log is not None else RunLog(None, enabled=False)
        train = config.train
        configure_matmul_precision(runtime.device)
        # `model` stays the plain GPT (sharded in place under FSDP) for checkpoints and samples; the
        # training step calls `forward_model`, wrapped for the other ranks and maybe compiled
        self.model = model
        self.model.loss_chunks = train.loss_chunks
        wrapped = distributed.wrap_model(self.model, runtime.strategy, runtime.precision, runtime.compile)
        self.forward_model, self.parallel_model = wrapped.forward, wrapped.parallel
        self.optimizer = build_optimizer(
            self.model, learning_rate=train.learning_rate, weight_decay=train.weight_decay,
            betas=(train.beta1, train.beta2), device_type=self.device.type, optimizer=train.optimizer,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.needs_loss_scaling)
        self.tokens_per_step = train.batch_size * config.model.block_size * train.grad_accum * self.world_size
        # one pass over the training tokens, in optimizer steps: the window --target-loss is judged on
        self.pass_loss = PassLoss(math.ceil(self.sampler.batches_per_epoch / train.grad_accum), train.target_loss)
        self.writer = CheckpointWriter(self._write, background=train.background_checkpoints, notice=self.log.info)

        self.step = 0  # optimizer steps completed
        self.tokens_seen = 0
        self.elapsed_s = 0.0  # wall time in fit() over all sessions of this run: steps, evals, samples, saves
        # the part of elapsed_s spent in the first step of each session: compilation, CUDA warm-up
        self.startup_s = 0.0
        self.best_loss = math.inf
        self.best_step: int | None = None  # the step of best_loss; None in checkpoints from before it was kept
        self.last_loss = math.nan
        self.last_save_s = 0.0  # elapsed_s at the last periodic save, for --checkpoint-every-s
        self.signal_received: int | None = None  # by this process
        self.stop_signal: int | None = None  # by any process, as all of them agreed after the last step

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def precision(self) -> Precision:
        return self.runtime.precision

    @property
    def rank(self) -> int:
        return self.runtime.rank

    @property
    def world_size(self) -> int:
        return self.runtime.world_size

    # --- one step ------------------------------------------------------------------------------

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)

    def train_step(self) -> StepStats:
        """One optimizer step over grad_accum micro-batches; raises NonFiniteLoss before a bad update."""
        train = self.config.train
        started = self.clock()
        self.model.train()
        lr = self.learning_rate(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        for micro_step in range(train.grad_accum):
            x, y = self.sampler.next_batch()
            x, y = self._to_device(x), self._to_device(y)
            with distributed.gradient_sync(self.parallel_model, enabled=micro_step == train.grad_accum - 1):
                with self.precision.autocast():
                    _, loss = self.forward_model(x, y)
                loss = loss / train.grad_accum
                loss_sum += loss.detach()
                self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        max_norm = train.grad_clip if train.grad_clip > 0 else math.inf
        grad_norm = distributed.clip_grad_norm(self.model, max_norm)
        # the one host sync of the step: the stop rules and the NaN check need the numbers now. Averaged
        # over ranks, a NaN on one rank is a NaN on all, so every rank takes the same branch below.
        loss_value, norm_value = self._mean_over_ranks(torch.stack([loss_sum, grad_norm.float()]))
        # with fp16 an inf gradient is the loss scaler's business: it skips the step and lowers the scale
        bad_norm = not math.isfinite(norm_value) and not self.precision.needs_loss_scaling
        if not math.isfinite(loss_value) or bad_norm:
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(f"loss {loss_value}, grad norm {norm_value}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        stats = StepStats(step=self.step, loss=loss_value, grad_norm=norm_value, lr=lr,
                          tokens=self.tokens_per_step, seconds=self.clock() - started)
        self.tokens_seen += stats.tokens
        self.last_loss = loss_value
        return stats

    def _sum_over_ranks(self, values: torch.Tensor) -> list[float]:
        if self.world_size > 1:
            torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
        return values.tolist()

    def _mean_over_ranks(self, values: torch.Tensor) -> list[float]:
        # SUM, then divide: gloo (the CPU backend) refuses ReduceOp.AVG in older torch (2.4 does)
        return [value / self.world_size for value in self._sum_over_ranks(values)]

    def learning_rate(self, step: int) -> float:
        train = self.config.train
        return learning_rate_at(
            step, max_lr=train.learning_rate, min_lr=train.learning_rate * train.min_lr_ratio,
            warmup_steps=train.warmup_steps, total_steps=train.decay_steps or train.max_steps,
            schedule=train.schedule,
        )

    # --- evaluation and samples ------------------------------------------------------------------

    @property
    def has_val(self) -> bool:
        return len(self.val_tokens) > self.config.model.block_size

    @property
    def evaluates(self) -> bool:
        """Whether the run evaluates on a val split, so that best_loss is the best val loss (else the best
        training loss)."""
        return self.has_val and self.config.train.eval_interval > 0

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the first eval_batches windows of the val split (the same ones every time), over the
        real vocabulary only, as `gptforge eval` computes it (model.vocabulary_loss)."""
        self.model.eval()
        sampler = SequentialSampler(self.val_tokens, self.config.train.batch_size, self.config.model.block_size,
                                    self.rank, self.world_size)
        total = torch.zeros((), device=self.device)
        for _ in range(self.config.train.eval_batches):
            x, y = sampler.next_batch()
            with self.precision.autocast():
                logits, _ = self.forward_model(self._to_device(x))
            total += vocabulary_loss(logits, self._to_device(y), self.real_vocab_size)
        self.model.train()
        return self._mean_over_ranks(torch.stack([total]))[0] / self.config.train.eval_batches

    @torch.no_grad()
    def score_hellaswag(self) -> tuple[float, float]:
        """HellaSwag acc and acc_norm over the examples, each rank scoring its share, the counts summed."""
        self.model.eval()

        def forward(tokens: torch.Tensor) -> torch.Tensor:
            with self.precision.autocast():
                return self.forward_model(tokens)[0]

        counts = hellaswag.score(forward, self.hellaswag, self.tokenizer, self.config.model.block_size, self.device,
                                 batch_size=self.config.train.batch_size, rank=self.rank, world_size=self.world_size)
        self.model.train()
        correct, correct_norm = self._sum_over_ranks(
            torch.tensor([counts.correct, counts.correct_norm], dtype=torch.float32, device=self.device))
        return correct / len(self.hellaswag), correct_norm / len(self.hellaswag)

    @property
    def real_vocab_size(self) -> int:
        """The tokenizer's vocabulary: the padded rows beyond it are never a target and never count in a loss."""
        return self.tokenizer.vocab_size if self.tokenizer is not None else self.config.model.vocab_size

    @property
    def can_sample(self) -> bool:
        """Rank 0 samples alone from the plain model; a sharded (FSDP) model's forward needs every rank."""
        return self.rank == 0 and self.runtime.strategy != "fsdp" and self.tokenizer is not None

    def sample(self, max_new_tokens: int, prompt: str = "") -> str:
        settings = SamplingSettings(max_new_tokens=max_new_tokens, temperature=0.8, top_k=200,
                                    seed=self.config.train.seed)
        with self.precision.autocast():
            return generate_text(self.model, self.tokenizer, prompt, settings)[0]

    # --- checkpoints -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue to the same bits: weights (unwrapped, uncompiled), optimizer,
        loss scaler, counters, the sampler's position and every RNG."""
        weights, optimizer_state = distributed.full_state_dicts(self.model, self.optimizer)
        return {
            "model": weights,
            "optimizer": optimizer_state,
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "elapsed_s": self.elapsed_s,
            "startup_s": self.startup_s,
            "best_loss": self.best_loss,
            "best_loss_split": "val" if self.evaluates else "train",
            "best_step": self.best_step,
            "last_loss": self.last_loss,
            "pass_loss": self.pass_loss.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": capture_rng_state(self.device),
            "world_size": self.world_size,
            "config": self.config.to_dict(),
            "tokenizer": self.tokenizer.to_dict() if self.tokenizer is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        distributed.load_full_state_dicts(self.model, self.optimizer, state["model"], state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.elapsed_s = state["elapsed_s"]
        self.startup_s = state.get("startup_s", 0.0)  # checkpoints written before it was kept lack it
        self.best_loss = state["best_loss"]
        self.best_step = state.get("best_step")
        self.last_loss = state["last_loss"]
        if "pass_loss" in state:  # checkpoints written before the rule judged whole passes lack it
            # best_step came with numbering steps as steps done; older milestones hold the 0-based index
            self.pass_loss.load_state_dict(state["pass_loss"], step_offset=0 if "best_step" in state else 1)
        self.last_save_s = self.elapsed_s
        restore_rng_state(state["rng"], self.device)

    def save(self, best: bool = False, wait: bool = False) -> None:
        """Write last.pt (and best.pt / step-N.pt as links to the same bytes) atomically, in the background
        unless `wait` (checkpoint_writer.py).

        Every rank calls it (FSDP gathers the weights from all of them); rank 0 alone writes.
        """
        state = self.state_dict()
        distributed.run_on_rank0(lambda: self.writer.save(state, best, wait=wait), self.rank, self.world_size)

    def _write(self, state: dict[str, Any], best: bool) -> Path:
        # on the writer's thread: everything about this checkpoint comes from `state`, as training goes on
        if self.run is None:
            raise RuntimeError("this Trainer was built without a run folder, so it cannot save checkpoints")
        train = self.config.train
        return self.run.save_checkpoint(state, best=best, keep=train.keep_checkpoints,
                                        compress=train.compress_checkpoints)

    # --- the loop --------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: object) -> None:
        # Only record it: printing here could re-enter a write to stdout that the signal interrupted.
        if self.signal_received is not None:
            self._stop_now(signum)
        self.signal_received = signum

    def _stop_now(self, signum: int) -> None:
        """A second Ctrl-C or SIGTERM: exit at once with 128 + its number, abandoning a checkpoint write in flight.

        The write's temporary file is removed (the checkpoints on disk are whole: writes are atomic), then
        the process ends without the interpreter's shutdown, which would stop the writer thread inside
        torch.save's C++ and abort ("terminate called without an active exception").
        """
        if self.run is not None and self.rank == 0:  # rank 0 alone writes checkpoints
            self.run.remove_temporaries()
        os.write(2, b"interrupted\n")  # unbuffered: sys.stderr may be in the middle of a write
        os._exit(128 + signum)

    def _agree_on_stopping(self) -> None:
        """Every rank must stop after the same step, or the others would wait forever in the next
        collective: share the signal any rank got and the slowest rank's clock."""
        if self.world_size == 1:
            self.stop_signal = self.signal_received
            return
        signum, self.elapsed_s, self.startup_s = distributed.max_over_ranks(
            [self.signal_received or 0, self.elapsed_s, self.startup_s], self.device)
        self.stop_signal = int(signum) or None

    def stop_reason(self, stats: StepStats) -> str | None:
        train = self.config.train
        reached = self.pass_loss.reached
        if reached is not None and reached.step == stats.step:
            return (f"Reached target loss: the mean training loss over the last pass of the data "
                    f"({self.pass_loss.steps} steps) is {reached.loss:.4f} < {train.target_loss} at step {stats.step}, "
                    f"after {reached.training_s:.1f}s of training (+{self.startup_s:.1f}s in the first step of each "
                    f"session: compilation and warm-up), {reached.tokens:,} tokens, {reached.epoch:.2f} epochs")
        if self.step >= train.max_steps:
            return f"reached max_steps {train.max_steps}"
        if train.max_epochs is not None and self.sampler.epoch >= train.max_epochs:
            return f"reached max_epochs {train.max_epochs} (epoch {self.sampler.epoch:.2f})"
        if train.time_budget is not None and self.elapsed_s >= train.time_budget:
            return f"used the time budget of {train.time_budget:.0f}s"
        if self.stop_signal is not None:
            return f"stopped by {signal.Signals(self.stop_signal).name} after {stats.step} steps"
        return None

    def fit(self) -> str:
        """Train until a stop rule fires; return why it stopped. Saves last.pt on every way out but a crash."""
        if self.run is None:
            raise RuntimeError("fit() saves checkpoints: build the Trainer with a run folder")
        train = self.config.train
        handlers = {}
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        self.log.start_progress(self.step, train.max_steps)
        reason: str | None = None if self.step < train.max_steps else f"already at max_steps {train.max_steps}"
        session_started, elapsed_before = self.clock(), self.elapsed_s
        first_step = True
        try:
            while reason is None:
                try:
                    stats = self.train_step()
                    # the time budget is wall time: evaluations, samples and checkpoints count too
                    self.elapsed_s = elapsed_before + self.clock() - session_started
                    if first_step:
                        self._note_first_step(stats)
                        first_step = False
                except NonFiniteLoss as exc:
                    raise UserError(
                        f"non-finite values at step {self.step + 1} ({exc}); the optimizer step was not taken and "
                        f"the last good checkpoint in {self.run.checkpoint_dir} is kept. Try a lower --learning-rate "
                        "or --dtype bfloat16/float32"
                    ) from None
                self._agree_on_stopping()
                self._record_pass_loss(stats)
                reason = self.stop_reason(stats)
                if self.stop_signal is not None:
                    self.log.info(f"{signal.Signals(self.stop_signal).name}: saving {self.run.checkpoint_dir} after "
                                  f"{stats.step} steps (press Ctrl-C again to stop at once)")
                self._after_step(stats, final=reason is not None)
        except KeyboardInterrupt:  # Ctrl-C off the main thread (no handler there): stop now, no waiting for a write
            raise
        except BaseException:
            self._finish_writing()
            raise
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            self.log.close_progress()
        self.log.info(reason)
        return reason

    def _note_first_step(self, stats: StepStats) -> None:
        """The first step of a session compiles the model and warms the GPU up: count it apart."""
        self.startup_s += stats.seconds
        if self.runtime.compile:
            self.log.info(f"step {stats.step} took {stats.seconds:.1f}s: torch.compile compiled the model (once per "
                          "session); training time in the summary is counted without it")

    @property
    def training_s(self) -> float:
        """Training time so far, without the first step of each session (compilation and warm-up)."""
        return self.elapsed_s - self.startup_s

    def _record_pass_loss(self, stats: StepStats) -> None:
        first_batch_below = self.pass_loss.first_batch_below
        self.pass_loss.add(stats.loss, Milestone(step=stats.step, loss=stats.loss, training_s=self.training_s,
                                                 tokens=self.tokens_seen, epoch=self.sampler.epoch))
        if first_batch_below is None and self.pass_loss.first_batch_below is not None:
            self.log.info(f"step {stats.step}: one batch's loss {stats.loss:.4f} is below the target "
                          f"{self.config.train.target_loss}; the run stops once the mean over a whole pass of the "
                          f"data ({self.pass_loss.steps} steps) is")

    def _finish_writing(self) -> None:
        """Let a checkpoint still being written land before the error that stops the run goes up."""
        try:
            self.writer.wait()
        except Exception as exc:  # the error already going up is the one to report; this one is a footnote
            self.log.warn(f"the last checkpoint write failed too: {exc}")

    def _after_step(self, stats: StepStats, final: bool) -> None:
        train = self.config.train
        self.log.advance(loss=f"{stats.loss:.4f}")
        # the first step too: its loss is the untrained model's, the curve's starting point
        if self.step % train.log_interval == 0 or self.step == 1 or final:
            self._log_step(stats)
        improved = False
        if self.evaluates and (self.step % train.eval_interval == 0 or final):
            val_loss = self.evaluate()
            self.log.info(f"step {stats.step} | val loss {val_loss:.4f}")
            self.log.record("eval", step=stats.step, val_loss=val_loss, elapsed_s=round(self.elapsed_s, 3))
            improved = val_loss < self.best_loss
            self._note_best(val_loss)
        if self.hellaswag and (self.step % train.hellaswag_interval == 0 or final):
            acc, acc_norm = self.score_hellaswag()
            self.log.info(f"step {stats.step} | HellaSwag acc {acc:.4f} | acc_norm {acc_norm:.4f}")
            self.log.record("hellaswag", step=stats.step, acc=acc, acc_norm=acc_norm)
        if train.sample_interval and self.can_sample and self.step % train.sample_interval == 0 and not final:
            text = self.sample(train.sample_tokens)
            self.log.info(f"--- sample at step {stats.step} ---\n{text}\n---")
            self.log.record("sample", step=stats.step, text=text)
        if self.step % train.checkpoint_interval == 0 or final or improved or self._checkpoint_time_due():
            if not self.evaluates:
                improved = stats.loss < self.best_loss
                self._note_best(stats.loss)
            self.save(best=improved, wait=final)
            self.last_save_s = self.elapsed_s

    def _note_best(self, loss: float) -> None:
        if loss < self.best_loss:
            self.best_loss, self.best_step = loss, self.step

    def _checkpoint_time_due(self) -> bool:
        """--checkpoint-every-s: a save once that much wall time in the loop has passed since the last one.

        elapsed_s is agreed over ranks after each step, so every rank takes the same decision."""
        every = self.config.train.checkpoint_every_s
        return every is not None and self.elapsed_s - self.last_save_s >= every

    def _log_step(self, stats: StepStats) -> None:
        tokens_per_sec = stats.tokens / stats.seconds
        memory = memory_gb(self.device)
        pass_mean = self.pass_loss.mean()
        line = (f"step {stats.step} | epoch {self.sampler.epoch:.2f} | loss {stats.loss:.4f} | "
                + (f"pass mean {pass_mean:.4f} | " if pass_mean is not None else "")
                + f"dt {stats.seconds * 1000:.1f}ms | tok/s {tokens_per_sec:,.0f} | norm {stats.grad_norm:.2f} | "
                f"lr {stats.lr:.2e}")
        if memory is not None:
            line += f" | mem {memory:.1f}GB"
        self.log.info(line)
        self.log.record("train", step=stats.step, epoch=round(self.sampler.epoch, 4), loss=stats.loss,
                        **({"pass_loss": pass_mean} if pass_mean is not None else {}),
                        lr=stats.lr, grad_norm=stats.grad_norm, dt_ms=round(stats.seconds * 1000, 3),
                        tokens_per_sec=round(tokens_per_sec, 1), tokens_seen=self.tokens_seen,
                        elapsed_s=round(self.elapsed_s, 3), **({"mem_gb": round(memory, 3)} if memory else {}))

