import json
import math
import subprocess
import sys

import pytest

from gptforge.errors import UserError
from gptforge.train.metrics_history import read_metrics
from gptforge.train.plot import plot_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_metrics(run_dir, steps: int = 60, truncate_last: bool = True) -> None:
    lines = []
    for step in range(steps):
        lines.append(json.dumps({
            "kind": "train", "step": step, "epoch": step / 20, "loss": 10 * math.exp(-step / 10) + 0.05,
            "lr": 1e-3 * min(1.0, (step + 1) / 10), "grad_norm": 1.0 / (step + 1), "dt_ms": 50.0,
            "tokens_per_sec": 8000.0 + step, "tokens_seen": 512 * (step + 1), "elapsed_s": 0.05 * step,
        }))
        if step % 20 == 19:
            lines.append(json.dumps({"kind": "eval", "step": step, "val_loss": 2.0, "elapsed_s": 0.05 * step}))
            lines.append(json.dumps({"kind": "sample", "step": step, "text": "To be"}))
    lines.append(json.dumps({"kind": "event", "message": "stopped: target loss reached"}))
    text = "\n".join(lines) + "\n"
    if truncate_last:
        text += '{"kind": "train", "step": 60, "lo'  # a crash mid-write
    (run_dir / "metrics.jsonl").write_text(text, encoding="utf-8")


def test_read_metrics_skips_broken_lines(tmp_path):
    write_metrics(tmp_path)
    with (tmp_path / "metrics.jsonl").open("a", encoding="utf-8") as file:
        file.write("\n[1, 2]\n\nnot json\n")
    records = read_metrics(tmp_path / "metrics.jsonl")
    kinds = [r["kind"] for r in records]
    assert kinds.count("train") == 60 and kinds.count("eval") == 3 and kinds.count("sample") == 3
    assert all(isinstance(r, dict) for r in records)
    assert read_metrics(tmp_path / "missing.jsonl") == []


def test_plot_run_writes_a_png(tmp_path):
    write_metrics(tmp_path)
    path = plot_run(tmp_path)
    assert path == tmp_path / "curves.png"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert 20_000 < len(data) < 2_000_000  # four drawn panels, not an empty canvas
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_plot_run_to_another_file_and_with_only_some_fields(tmp_path):
    lines = [json.dumps({"kind": "train", "step": 0, "loss": 4.0}),
             json.dumps({"kind": "train", "step": 1, "loss": float("nan")}),
             json.dumps({"kind": "eval", "step": 1, "val_loss": 3.5})]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "figures" / "loss.png"
    assert plot_run(str(tmp_path), out=out) == out
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert not (tmp_path / "curves.png").exists()


def test_only_evals_is_enough_to_plot(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "step": 5, "val_loss": 3.0}) + "\n")
    assert plot_run(tmp_path).read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("content", [None, "", '{"kind": "event", "message": "started"}\n{"kind": "tra'])
def test_no_metrics_is_a_user_error(tmp_path, content):
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=r"no metrics in .*metrics\.jsonl yet"):
        plot_run(tmp_path)
    assert not (tmp_path / "curves.png").exists()


def test_missing_run_dir_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        plot_run(tmp_path / "nope")


def test_importing_plot_does_not_import_matplotlib_or_torch():
    code = "import sys, gptforge.train.plot; print('matplotlib' in sys.modules, 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_the_loss_panel_draws_the_mean_over_the_last_pass_where_the_run_logged_it():
    from matplotlib.figure import Figure

    from gptforge.train.plot import _plot_loss

    train = [{"kind": "train", "step": step, "loss": 1.0 / (step + 1), **({"pass_loss": 0.5} if step >= 3 else {})}
             for step in range(6)]
    axes = Figure().subplots()
    _plot_loss(axes, train, [])
    lines = {line.get_label(): line for line in axes.get_lines()}
    assert set(lines) == {"train", "train, mean over the last pass"}
    assert list(lines["train, mean over the last pass"].get_xdata()) == [3, 4, 5]


@pytest.mark.parametrize("plot", [True, False])
def test_training_draws_its_curves_unless_told_not_to(tmp_path, plot):
    from conftest import read_log, tiny_char_config
    from gptforge.train.session import train

    run = train(tiny_char_config(tmp_path / "run", max_steps=2, plot=plot)).run_dir
    assert (run / "curves.png").is_file() == plot
    assert ("curves: " in read_log(run)) == plot
