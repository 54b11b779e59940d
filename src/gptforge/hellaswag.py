"""HellaSwag scored by completion loss: for each context, the ending the model finds most likely wins.

Each example is four rows, the context's tokens followed by one ending's (GPT-2 BPE, the ending with a
leading space). The model's loss over an ending's tokens picks its answer two ways: `acc` takes the
lowest summed loss, `acc_norm` the lowest mean loss per token (which does not favour short endings).
This is the completion-style scoring of build-nanogpt's hellaswag.py, whose docstring gives GPT-2 124M
acc 0.2859 and acc_norm 0.2955 on the 10,042 val examples.

Examples are scored in batches of whole examples, the rows right-padded: a causal model's logits at a
position never see what comes after it, so padding changes no score.
"""

from __future__ import annotations

import json
import math
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from gptforge.errors import UserError
from gptforge.fileio import atomic_write_bytes
from gptforge.paths import cache_dir, local_folders
from gptforge.tokenizer import Tokenizer

HELLASWAG_FILENAME = "hellaswag_val.jsonl"
HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
HELLASWAG_VAL_EXAMPLES = 10_042
ENDINGS = 4
DOWNLOAD_TIMEOUT_S = 60
MAX_LINE_CHARS = 100_000  # a real example is under 2,000 characters; a longer line is not HellaSwag


@dataclass(frozen=True)
class Example:
    context: str
    endings: tuple[str, ...]
    label: int


@dataclass
class HellaSwagScore:
    """Correct answers out of `examples`, by summed loss (acc) and by mean loss per token (acc_norm)."""

    examples: int = 0
    correct: int = 0
    correct_norm: int = 0

    @property
    def acc(self) -> float:
        return self.correct / self.examples if self.examples else float("nan")

    @property
    def acc_norm(self) -> float:
        return self.correct_norm / self.examples if self.examples else float("nan")


def find_hellaswag(explicit: str | Path | None = None, download: bool = True) -> Path:
    """The val file: `explicit` (which must exist), else hellaswag_val.jsonl in $GPTFORGE_DATA_DIR or the cache,
    else downloaded into the cache."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserError(f"HellaSwag file not found: {path}; pass the path of hellaswag_val.jsonl")
        return path
    for folder in local_folders():
        if (folder / HELLASWAG_FILENAME).is_file():
            return folder / HELLASWAG_FILENAME
    destination = cache_dir() / HELLASWAG_FILENAME
    if not download:
        raise UserError(f"no {HELLASWAG_FILENAME} in GPTFORGE_DATA_DIR or {cache_dir()}; put it there")
    try:
        with urllib.request.urlopen(HELLASWAG_URL, timeout=DOWNLOAD_TIMEOUT_S) as response:
            contents = response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"cannot download HellaSwag from {HELLASWAG_URL} ({exc}); put {HELLASWAG_FILENAME} in "
                        f"GPTFORGE_DATA_DIR or {cache_dir()}, or pass its path: --hellaswag FILE") from None
    read_examples_from_lines(contents.decode("utf-8", errors="replace").splitlines(), HELLASWAG_URL)
    destination.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(destination, contents)
    return destination


def read_examples(path: Path) -> list[Example]:
    """Every example of a HellaSwag jsonl file (fields ctx, endings, label), refused in one line when a line
    is not one."""
    try:
        with Path(path).open(encoding="utf-8") as file:
            return read_examples_from_lines(file, path)
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; pass HellaSwag's hellaswag_val.jsonl") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_examples_from_lines(lines: Iterable[str], source: str | Path) -> list[Example]:
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        if len(line) > MAX_LINE_CHARS:
            raise UserError(f"{where} is {len(line):,} characters long: not a HellaSwag example")
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError, ValueError):
            raise UserError(f"{where} is not JSON; pass HellaSwag's hellaswag_val.jsonl") from None
        examples.append(_example(record, where))
    if not examples:
        raise UserError(f"{source} holds no HellaSwag examples")
    return examples


def _example(record: object, where: str) -> Example:
    if not isinstance(record, dict):
        raise UserError(f"{where} is not a JSON object with ctx, endings and label")
    context, endings, label = record.get("ctx"), record.get("endings"), record.get("label")
    if not isinstance(context, str):
        raise UserError(f"{where}: ctx must be a string")
    if not (isinstance(endings, list) and len(endings) == ENDINGS and all(isinstance(e, str) and e for e in endings)):
        raise UserError(f"{where}: endings must be a list of {ENDINGS} non-empty strings")
    if isinstance(label, str) and label.isdigit():
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < ENDINGS:
        raise UserError(f"{where}: label must be 0, 1, 2 or 3")
    return Example(context=context, endings=tuple(endings), label=label)


def check_tokenizer(tokenizer: Tokenizer) -> None:
    """HellaSwag's text is English prose: only GPT-2's BPE can encode it as the published figures do."""
    if tokenizer.name != "gpt2":
        raise UserError(f"HellaSwag needs a model with the GPT-2 tokenizer; this one uses {tokenizer.name!r}, "
                        "whose vocabulary cannot encode HellaSwag's text")


def render(example: Example, tokenizer: Tokenizer, block_size: int) -> list[tuple[list[int], int]]:
    """The four rows (tokens, index of the ending's first token). A row longer than the model's context keeps
    its last block_size tokens: the ending, and as much of the context as fits before it."""
    context = tokenizer.encode(example.context) or tokenizer.start_ids()  # a first token to predict from
    rows = []
    for ending in example.endings:
        ending_ids = tokenizer.encode(" " + ending)
        row = context + ending_ids
        start = len(context)
        if len(row) > block_size:
            start = max(1, start - (len(row) - block_size))
            row = row[-block_size:]
        rows.append((row, max(start, 1)))  # the first token of a row is never predicted, so never scored
    return rows


def ending_losses(logits: torch.Tensor, tokens: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor,
                  vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed and mean cross-entropy over each row's ending tokens (the real vocabulary only).

    logits (R, T, V) from tokens (R, T); row r's ending holds positions starts[r] .. lengths[r]-1."""
    predicted = logits[:, :-1, :vocab_size].float()
    targets = tokens[:, 1:]
    losses = F.cross_entropy(predicted.reshape(-1, vocab_size), targets.reshape(-1), reduction="none")
    losses = losses.view(targets.shape)  # losses[r, j] is the loss of token j + 1
    positions = torch.arange(1, tokens.size(1), device=tokens.device)
    mask = (positions >= starts[:, None]) & (positions < lengths[:, None])
    summed = (losses * mask).sum(dim=1)
    return summed, summed / mask.sum(dim=1)


@torch.no_grad()
def score(forward: Callable[[torch.Tensor], torch.Tensor], examples: list[Example], tokenizer: Tokenizer,
          block_size: int, device: torch.device, batch_size: int = 16, rank: int = 0, world_size: int = 1,
          progress: bool = False) -> HellaSwagScore:
    """Score this rank's share of `examples` (every world_size-th one) with `forward` (tokens -> logits).

    Every rank runs the same number of batches, the last ones padded with a repeated example that is not
    counted: a sharded (FSDP) model's forward needs every rank at each call."""
    if batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {batch_size}")
    check_tokenizer(tokenizer)
    mine = examples[rank::world_size]
    per_rank = math.ceil(len(examples) / world_size)
    result = HellaSwagScore()
    bar = tqdm(total=per_rank, unit="example", desc="HellaSwag", leave=False,
               disable=not (progress and sys.stderr.isatty()))
    for first in range(0, per_rank, batch_size):
        batch = [(mine[i] if i < len(mine) else mine[-1] if mine else examples[0], i < len(mine))
                 for i in range(first, min(first + batch_size, per_rank))]
        rows = [row for example, _ in batch for row in render(example, tokenizer, block_size)]
        width = max(len(tokens) for tokens, _ in rows)
        tokens = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (ids, _) in enumerate(rows):
            tokens[r, :len(ids)] = torch.tensor(ids)
        tokens = tokens.to(device)
        starts = torch.tensor([start for _, start in rows], device=device)
        lengths = torch.tensor([len(ids) for ids, _ in rows], device=device)
        summed, mean = ending_losses(forward(tokens), tokens, starts, lengths, tokenizer.vocab_size)
        summed, mean = summed.view(-1, ENDINGS).cpu(), mean.view(-1, ENDINGS).cpu()
        for k, (example, counted) in enumerate(batch):
            if counted:
                result.examples += 1
                result.correct += int(summed[k].argmin().item() == example.label)
                result.correct_norm += int(mean[k].argmin().item() == example.label)
        bar.update(len(batch))
    bar.close()
    return result
