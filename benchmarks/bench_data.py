"""The token store's costs: prepare's time and peak memory by corpus size, time to the first training step, and
batches per second read from the store.

    python benchmarks/bench_data.py --sizes-gb 0.05 0.5 --workers 2

For each size, a JSONL corpus of that many bytes is generated (tiny Shakespeare cut into documents and
repeated), then in fresh processes, one at a time:
- `gptforge prepare --data corpus.jsonl --out STORE`: wall time and the peak resident memory of the
  prepare process and of its workers (the largest of them);
- `gptforge train --data STORE --preset tiny --max-steps 1`: wall time to the end of the first step (median of
  3 runs) and its peak memory;
- batches of 16 x 1024 tokens per second from the store's sequential and random samplers (this process);
- with --peer, build-nanogpt's own `fineweb.py` (../shared/peers, run unmodified) on the same documents:
  `datasets.load_dataset` answers with the local JSONL file (converted to Arrow first: timed apart) and
  `tiktoken.get_encoding` with the local GPT-2 ranks; its pool takes its default of cores // 2 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gptforge.data import make_sampler
from gptforge.paths import data_dir
from gptforge.token_store import open_store

# Web documents run to a few thousand characters (FineWeb-Edu's sample-10BT: about 10B tokens in under 10M
# documents, so about 1,000 tokens each).
DOCUMENT_CHARS = 4_500


def write_corpus(path: Path, size_bytes: int) -> int:
    """A JSONL file of about `size_bytes`: documents of about DOCUMENT_CHARS characters, whole speeches of tiny
    Shakespeare in turn; the count."""
    folder = data_dir() or Path("../shared/data")
    speeches = [p for p in (folder / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n") if p.strip()]
    written = documents = 0
    with path.open("w", encoding="utf-8") as file:
        parts: list[str] = []
        while written < size_bytes:
            for speech in speeches:
                parts.append(speech)
                if sum(map(len, parts)) < DOCUMENT_CHARS:
                    continue
                line = json.dumps({"text": "\n\n".join(parts), "id": documents}) + "\n"
                file.write(line)
                written += len(line)
                documents += 1
                parts = []
                if written >= size_bytes:
                    break
    return documents


def run_measured(argv: list[str], prefix: list[str] | None = None) -> tuple[float, float, float, str]:
    """Wall seconds, peak RSS in GB (the largest of it and its workers), start time and stderr of
    `python -m gptforge ARGV`, or of `python -c CODE ARGS` when `prefix` is ["-c", CODE]."""
    code = (
        "import resource, runpy, sys; sys.argv = ['gptforge'] + sys.argv[1:]\n"
        "try:\n    runpy.run_module('gptforge', run_name='__main__')\n"
        "finally:\n"
        "    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "    print(f'PEAK_KB {own} {kids}', file=sys.stderr)\n")
    command = [sys.executable, *(prefix or ["-c", code]), *argv]
    began, started = time.time(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or "PEAK_KB" not in done.stderr:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    own, kids = re.findall(r"PEAK_KB (\d+) (\d+)", done.stderr)[-1]  # a progress bar may share its line
    return elapsed, max(int(own), int(kids)) / 1e6, began, done.stderr


# build-nanogpt's fineweb.py, executed as its own __main__ (so its pool's workers find its functions) with
# __file__ in a scratch folder (its shards go beside it) and the hub replaced by the local corpus.
PEER_DRIVER = """
import resource, sys, time
import datasets, tiktoken
from gptforge.tokenizer import GPT2Tokenizer
peer, corpus, scratch = sys.argv[1:4]
load = datasets.load_dataset
started = time.perf_counter()
local = load("json", data_files=corpus, split="train", cache_dir=scratch + "/hf-cache")
print(f"LOAD_S {time.perf_counter() - started}", file=sys.stderr)
datasets.load_dataset = lambda *args, **kwargs: local
tiktoken.get_encoding = lambda name: GPT2Tokenizer()._encoding
globals()["__file__"] = scratch + "/fineweb.py"
try:
    exec(compile(open(peer, encoding="utf-8").read(), peer, "exec"), globals())
finally:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"PEAK_KB {own} {kids}", file=sys.stderr)
"""
PEER = Path(__file__).resolve().parents[2] / "shared" / "peers" / "build-nanogpt" / "fineweb.py"


def run_peer(corpus: Path, scratch: Path) -> tuple[float, float, int]:
    """fineweb.py's seconds (the Arrow conversion left out), peak GB and tokens written."""
    scratch.mkdir()
    elapsed, peak_gb, _, stderr = run_measured([str(PEER), str(corpus), str(scratch)], ["-c", PEER_DRIVER])
    load_s = float(re.findall(r"LOAD_S ([\d.]+)", stderr)[-1])
    tokens = sum(len(np.load(path, mmap_mode="r")) for path in (scratch / "edu_fineweb10B").glob("*.npy"))
    return elapsed - load_s, peak_gb, tokens


def first_step_seconds(run_dir: Path, began: float) -> float:
    """From the process's start to the end of its first training step (metrics.jsonl's time of it)."""
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("kind") == "train":
            return record["time"] - began
    raise SystemExit(f"{run_dir} logged no training step")


def first_step(store: Path, run_root: Path, runs: int = 3) -> tuple[float, float]:
    """`gptforge train --data STORE`'s seconds from its start to the end of its first step, and its peak GB: the
    median of `runs` fresh runs (the first after a large prepare may find torch's files out of the page cache)."""
    seconds, peaks = [], []
    for run in range(runs):
        run_dir = run_root / str(run)
        _, peak_gb, began, _ = run_measured(["train", "--data", str(store), "--preset", "tiny", "--tokenizer", "gpt2",
                                             "--max-steps", "1", "--eval-interval", "0", "--device", "cpu",
                                             "--no-progress", "--out", str(run_dir)])
        seconds.append(first_step_seconds(run_dir, began))
        peaks.append(peak_gb)
    return statistics.median(seconds), max(peaks)


def batches_per_second(store_path: Path, kind: str, seconds: float = 3.0) -> float:
    store = open_store(store_path)
    sampler = make_sampler(kind, store.train, 16, 1024, seed=0)
    served, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        sampler.next_batch()
        served += 1
    return served / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-gb", type=float, nargs="+", default=[0.05, 0.5])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--peer", action="store_true", help="also run build-nanogpt's fineweb.py on each corpus")
    parser.add_argument("--folder", help="where to write corpora and stores (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.folder) as scratch:
        root = Path(scratch)
        print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, workers {args.workers}, "
              f"documents of about {DOCUMENT_CHARS:,} characters")
        print("size GB | documents | prepare s | prepare peak GB | tokens/s | first step s | first step peak GB "
              "| seq batches/s | random batches/s" + (" | fineweb.py s | its peak GB | its tokens/s | ratio"
                                                      if args.peer else ""))
        for size in args.sizes_gb:
            corpus = root / f"corpus-{size}.jsonl"
            documents = write_corpus(corpus, int(size * 1e9))
            store = root / f"store-{size}"
            prepare_s, prepare_gb, _, _ = run_measured(["prepare", "--data", str(corpus), "--out", str(store),
                                                        "--workers", str(args.workers), "--val-fraction", "0.001"])
            manifest = json.loads((store / "manifest.json").read_text())
            tokens = manifest["tokens"]["train"] + manifest["tokens"]["val"]
            peer = ""
            if args.peer:
                peer_s, peer_gb, peer_tokens = run_peer(corpus, root / f"peer-{size}")
                peer = (f" | {peer_s:12.1f} | {peer_gb:11.2f} | {peer_tokens / peer_s:12,.0f} | "
                        f"{(tokens / prepare_s) / (peer_tokens / peer_s):5.2f}")
                shutil.rmtree(root / f"peer-{size}")
            corpus.unlink()  # the run needs only the store
            first_s, first_gb = first_step(store, root / f"run-{size}")
            print(f"{size:7g} | {documents:9,} | {prepare_s:9.1f} | {prepare_gb:15.2f} | {tokens / prepare_s:8,.0f} | "
                  f"{first_s:12.1f} | {first_gb:18.2f} | "
                  f"{batches_per_second(store, 'sequential'):13,.0f} | {batches_per_second(store, 'random'):16,.0f}"
                  + peer, flush=True)
            shutil.rmtree(store)


if __name__ == "__main__":
    main()
