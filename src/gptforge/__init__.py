"""gptforge: train GPT-2-style language models from scratch, sample from them, and show them off."""

__version__ = "0.1.0"
