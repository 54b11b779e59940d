"""The model card (README.md) of an `export --format hf` folder: the hub's metadata, what the model is, how to
use it, and the one way transformers' generation differs from gptforge's."""

from __future__ import annotations

import json
from typing import Any

from gptforge.trained_model import TrainedModel, best_loss_label

CARD_FILE = "README.md"


def _fact(value: Any, spec: str = ",") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "n/a"


def model_card(trained: TrainedModel) -> str:
    """README.md for the hub: YAML front matter (library, task, tags), then the facts and a usage example."""
    facts, tokenizer, block_size = trained.facts, trained.tokenizer, trained.config.model.block_size
    metadata = {"library_name": "transformers", "pipeline_tag": "text-generation",
                "tags": ["gpt2", "gptforge", "text-generation"]}
    # JSON is valid YAML, and quoting keeps an odd preset name from breaking the header
    header = "\n".join(f"{key}: {json.dumps(value)}" for key, value in metadata.items())
    return f"""---
{header}
---

# gptforge: {facts.preset}

A GPT-2-style language model trained from scratch with gptforge, exported as a
transformers `GPT2LMHeadModel` with its tokenizer.

| fact | value |
|---|---|
| preset | `{facts.preset}` |
| parameters | {_fact(facts.parameters)} |
| steps trained | {_fact(facts.steps)} |
| tokens seen | {_fact(facts.tokens_seen)} |
| final training loss | {_fact(facts.final_loss, ".4f")} |
| {best_loss_label(facts)} | {_fact(facts.best_loss, ".4f")} |
| tokenizer | {tokenizer.name} ({tokenizer.vocab_size:,} tokens) |
| context length (`n_positions`) | {block_size:,} tokens |

## Use

```python
from transformers import pipeline

generate = pipeline("text-generation", model="THIS_FOLDER_OR_REPO")
print(generate("ROMEO:", max_new_tokens=100)[0]["generated_text"])
```

or with gptforge: `gptforge sample --hf THIS_FOLDER --prompt "ROMEO:"`.

## Limits

transformers does not slide past `n_positions`: the prompt and the new tokens together must stay within
{block_size:,} tokens, or generation fails. `gptforge sample --hf` slides its window and goes on.
"""
