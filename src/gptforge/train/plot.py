"""Training curves from a run's metrics.jsonl, drawn to RUN/curves.png.

matplotlib is imported inside ``plot_run`` so that importing gptforge (and every command that never
plots) does not pay for it. The figure is drawn on a bare ``Figure``, not pyplot: no global backend
is switched, no window can open, and nothing leaks between calls.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from gptforge.errors import UserError
from gptforge.run_dir import RunDir
from gptforge.train.metrics_history import read_history

LOG_SCALE_SPAN = 10.0  # switch the loss axis to log scale when the loss spans more than this factor
IMAGE_FORMATS = ("png", "svg", "pdf")  # chosen by the name of the file written


def plot_run(run_dir: str | Path, out: Path | None = None) -> Path:
    """Draw train/val loss, learning rate, grad norm, throughput and (when scored) HellaSwag accuracy against the
    step; return the file."""
    run = RunDir(Path(run_dir))
    run.require_folder(checkpoint_flag=False)
    out = Path(out) if out is not None else run.curves_file
    image_format = out.suffix.lower().removeprefix(".")
    if image_format not in IMAGE_FORMATS:  # the bytes written are the format the name says
        raise UserError(f"cannot write a plot as {out.name}: name a .png, .svg or .pdf file")
    metrics_path = run.metrics_file
    records = read_history(metrics_path)  # each step once, numbered as steps done
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    if not train and not evals:
        raise UserError(f"no metrics in {metrics_path} yet: train for at least log_interval steps, then plot again")

    from matplotlib.figure import Figure

    from gptforge.fileio import atomic_write_bytes

    hellaswag = [r for r in records if r.get("kind") == "hellaswag"]
    layout = [["loss", "lr"], ["grad", "speed"]] + ([["hellaswag", "hellaswag"]] if hellaswag else [])
    figure = Figure(figsize=(12, 4 * len(layout)), layout="constrained")
    figure.suptitle(f"gptforge run: {run.path.resolve().name}")
    axes = figure.subplot_mosaic(layout)
    _plot_loss(axes["loss"], train, evals)
    _plot_series(axes["lr"], train, "lr", "learning rate")
    _plot_series(axes["grad"], train, "grad_norm", "gradient norm")
    _plot_series(axes["speed"], train, "tokens_per_sec", "tokens / s")
    if hellaswag:
        _plot_hellaswag(axes["hellaswag"], hellaswag)

    image = io.BytesIO()
    figure.savefig(image, format=image_format, dpi=100)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, image.getvalue())
    except OSError as exc:
        raise UserError(f"could not write {out}: {exc.strerror or exc}; choose another --out") from None
    return out


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of the records that carry a finite number under ``key``."""
    points = [(r["step"], r[key]) for r in records if _is_number(r.get(key)) and _is_number(r.get("step"))]
    return [step for step, _ in points], [value for _, value in points]


def _is_number(value: Any) -> bool:
    """A finite number a plot can place: an integer of hundreds of digits (a hostile metrics line) is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _start_panel(axes: Any, title: str) -> None:
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.grid(True, alpha=0.3)


def _mark_empty(axes: Any) -> None:
    axes.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=axes.transAxes)


def _plot_series(axes: Any, records: list[dict], key: str, title: str) -> None:
    _start_panel(axes, title)
    steps, values = _series(records, key)
    if steps:
        axes.plot(steps, values, linewidth=1)
    else:
        _mark_empty(axes)


def _plot_loss(axes: Any, train: list[dict], evals: list[dict]) -> None:
    """Training loss as a line (and its mean over the last pass of the data, which --target-loss judges),
    validation loss as points, on a log axis once it spans a decade."""
    _start_panel(axes, "loss")
    train_steps, train_losses = _series(train, "loss")
    pass_steps, pass_losses = _series(train, "pass_loss")
    val_steps, val_losses = _series(evals, "val_loss")
    if not train_steps and not val_steps:
        _mark_empty(axes)
        return
    if train_steps:
        axes.plot(train_steps, train_losses, linewidth=1, label="train")
    if pass_steps:
        axes.plot(pass_steps, pass_losses, linewidth=1.5, label="train, mean over the last pass")
    if val_steps:
        axes.plot(val_steps, val_losses, "o", markersize=4, label="val")
    positive = [loss for loss in train_losses + val_losses if loss > 0]
    if positive and max(positive) / min(positive) > LOG_SCALE_SPAN:
        axes.set_yscale("log")
    axes.legend()


def _plot_hellaswag(axes: Any, records: list[dict]) -> None:
    """acc and acc_norm, with chance (one ending in four) as a dashed line."""
    _start_panel(axes, "HellaSwag val accuracy")
    for key in ("acc", "acc_norm"):
        steps, values = _series(records, key)
        axes.plot(steps, values, "o-", markersize=3, linewidth=1, label=key)
    axes.axhline(0.25, linestyle="--", linewidth=1, color="grey", label="chance")
    axes.legend()
