"""One loader for a run, a checkpoint file, a transformers folder and a Space, and the typed facts it gives."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from gptforge.checkpoint import load_checkpoint, save_checkpoint
from gptforge.errors import UserError
from gptforge.interop.hf_export import export_hf
from gptforge.interop.space import export_space, space_readme
from gptforge.trained_model import ModelFacts, TrainedModel, best_loss_label
from gptforge.use.app import facts_markdown
from gptforge.use.load import load_trained


@pytest.fixture(scope="module")
def from_run(tiny_run: Path) -> TrainedModel:
    return load_trained(run=tiny_run, device="cpu")


def logits(trained: TrainedModel) -> torch.Tensor:
    tokens = torch.arange(24).remainder(trained.tokenizer.vocab_size).view(2, 12)
    with torch.no_grad():
        return trained.model(tokens)[0][..., :trained.tokenizer.vocab_size]  # HF folders drop the padded rows


def test_every_source_gives_the_same_model(from_run: TrainedModel, tiny_run: Path, tmp_path: Path) -> None:
    last = tiny_run / "checkpoints" / "last.pt"
    export_hf(from_run, tmp_path / "hf")
    sources = {"checkpoint": {"checkpoint": last}, "hf": {"hf": tmp_path / "hf"},
               "space": {"space": export_space(from_run, tmp_path / "space")}}
    for name, source in sources.items():
        loaded = load_trained(**source, device="cpu")
        torch.testing.assert_close(logits(loaded), logits(from_run), rtol=0, atol=0, msg=name)
        assert loaded.tokenizer.to_dict() == from_run.tokenizer.to_dict(), name
        assert loaded.facts.parameters and loaded.facts.block_size == from_run.config.model.block_size, name
    assert from_run.source == last and from_run.facts.checkpoint == str(last)
    assert from_run.facts.steps == 20 and from_run.facts.tokens_seen and from_run.facts.final_loss is not None


def test_a_transformers_folder_has_no_training_facts(from_run: TrainedModel, tmp_path: Path) -> None:
    export_hf(from_run, tmp_path / "hf")
    facts = load_trained(hf=tmp_path / "hf", device="cpu").facts
    assert (facts.steps, facts.tokens_seen, facts.final_loss, facts.best_loss) == (None, None, None, None)
    assert facts.preset == "hf:hf" and facts.checkpoint == str(tmp_path / "hf" / "model.safetensors")


@pytest.mark.parametrize("sources", [{}, {"run": "a", "checkpoint": "b"}, {"hf": "a", "space": "b"}])
def test_exactly_one_source(sources: dict) -> None:
    with pytest.raises(UserError, match="exactly one"):
        load_trained(**sources)


def resaved(tiny_run: Path, tmp_path: Path, **changes: object) -> Path:
    """The tiny run's last checkpoint with `changes` to its state (None removes a key), as a new file."""
    state = load_checkpoint(tiny_run / "checkpoints" / "last.pt")
    for key, value in changes.items():
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    return save_checkpoint(state, tmp_path / "changed.pt")


def test_the_best_loss_split_comes_from_the_checkpoint(tiny_run: Path, tmp_path: Path) -> None:
    recorded = load_trained(checkpoint=resaved(tiny_run, tmp_path, best_loss_split="val"), device="cpu")
    assert recorded.facts.best_loss_split == "val"  # what the trainer says, not what its config suggests
    assert best_loss_label(recorded.facts) == "best val loss"


def test_older_checkpoints_get_the_best_loss_split_guessed_from_their_config(tiny_run: Path, tmp_path: Path) -> None:
    state = load_checkpoint(tiny_run / "checkpoints" / "last.pt")
    assert state["config"]["train"]["eval_interval"] == 0
    guessed = load_trained(checkpoint=resaved(tiny_run, tmp_path, best_loss_split=None), device="cpu")
    assert guessed.facts.best_loss_split == "train"
    evaluating = {**state["config"], "train": {**state["config"]["train"], "eval_interval": 5, "val_fraction": 0.1}}
    guessed = load_trained(checkpoint=resaved(tiny_run, tmp_path, best_loss_split=None, config=evaluating),
                           device="cpu")
    assert guessed.facts.best_loss_split == "val"


def test_facts_json_round_trip(from_run: TrainedModel, tmp_path: Path) -> None:
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(from_run.facts.to_dict()))
    assert ModelFacts.from_dict(json.loads(path.read_text()), path) == from_run.facts
    space = export_space(from_run, tmp_path / "space")
    written = json.loads((space / "facts.json").read_text())
    assert set(written) == {"preset", "parameters", "steps", "tokens_seen", "final_loss", "best_loss",
                            "best_loss_split", "tokenizer", "block_size"}  # the keys older Spaces have: no path
    loaded = load_trained(space=space, device="cpu").facts
    assert loaded == dataclasses.replace(from_run.facts, checkpoint=str(space / "model.safetensors"))


def test_a_facts_json_from_an_older_export_with_keys_missing_still_loads(from_run: TrainedModel,
                                                                         tmp_path: Path) -> None:
    space = export_space(from_run, tmp_path / "space")
    (space / "facts.json").write_text(json.dumps({"parameters": 1234, "steps": 7, "final_loss": 2, "extra": "x"}))
    trained = load_trained(space=space, device="cpu")
    assert trained.facts == ModelFacts(parameters=1234, steps=7, final_loss=2.0,
                                       checkpoint=str(space / "model.safetensors"))
    panel = facts_markdown(trained)
    assert "**preset**: `custom`" in panel and "**best loss**: n/a" in panel and "**steps trained**: 7" in panel
    readme = space_readme(trained, "5.0", offline_tokenizer=False)
    assert "| tokens seen | n/a |" in readme and "| final training loss | 2.0000 |" in readme


@pytest.mark.parametrize("bad", [[1, 2], {"steps": "many"}, {"final_loss": "low"}, {"parameters": True}])
def test_a_facts_json_with_the_wrong_types_is_one_clear_error(bad: object, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="facts.json"):
        ModelFacts.from_dict(bad, tmp_path / "facts.json")
