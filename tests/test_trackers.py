import pytest

from conftest import tiny_char_config
from gptforge.errors import UserError
from gptforge.train.session import train
from gptforge.train.trackers import check_trackers


def tiny_config(tmp_path, **train_settings):
    settings = {"max_steps": 4, "log_interval": 1, "eval_interval": 2, "eval_batches": 2, "batch_size": 2}
    return tiny_char_config(tmp_path / "run", **{**settings, **train_settings})


def test_tensorboard_receives_the_logged_scalars(tmp_path) -> None:
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    outcome = train(tiny_config(tmp_path, tensorboard=True))
    events = event_accumulator.EventAccumulator(str(outcome.run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/grad_norm", "eval/val_loss"} <= set(tags)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]  # step N: N updates done


@pytest.mark.slow
def test_wandb_offline_run_is_written(tmp_path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    outcome = train(tiny_config(tmp_path, wandb=True))
    runs = list((outcome.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert any(runs[0].rglob("*.wandb"))


def test_missing_tracker_is_a_clear_error_before_the_run_exists(tmp_path, monkeypatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a))
    with pytest.raises(UserError, match="pip install tensorboard"):
        check_trackers(tensorboard=True, wandb=False)
    with pytest.raises(UserError, match="pip install tensorboard"):
        train(tiny_config(tmp_path, tensorboard=True))
    assert not (tmp_path / "run").exists()
