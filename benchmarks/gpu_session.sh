#!/usr/bin/env bash
# Everything the project still has to measure on a CUDA GPU, in one command, for a session that has one:
#   correctness of the CUDA paths (tests marked gpu), training throughput and MFU of GPT-2 124M, the scaling
#   table (model size, context length), the flagship run to training loss < 0.1 with its log and curves, and
#   how long a checkpoint save stops training; the step side by side with nanoGPT's; the flagship with Muon.
#
#   GPTFORGE_DATA_DIR=... OUT=results-dir bash benchmarks/gpu_session.sh \
#       [tests|bench|scaling|flagship|saves|vs-nanogpt|flagship-muon]...
#
# With no argument it runs the first six parts (well over 10 minutes with compilation); name parts to split
# the work across calls. Results land in $OUT (at most 8 files, as a device lease returns them):
#   gpu-tests.txt, bench.jsonl (one `gptforge bench --json` object per line), bench.txt (the tables), and
#   flagship.txt (per seed: when the mean training loss over a pass of the data fell below 0.1, the training
#   time to it, tokens and epochs) with the first seed's flagship-train.log, -metrics.jsonl, -curves.png and
#   -summary.txt; saves.txt; vs-nanogpt.txt with vs-nanogpt.jsonl; flagship-muon.txt. Record them in RESULTS.md.
#   DRY_RUN=1 rehearses `flagship` and `saves` on the CPU with tiny sizes.
# vs-nanogpt imports nanoGPT's model.py from $NANOGPT_DIR (default: ../shared/peers/nanoGPT beside the repo).
# Runs from a checkout without installing: PYTHONPATH=src. Needs torch with CUDA, numpy, tiktoken, tqdm,
# matplotlib and pytest; gradio and transformers are not needed.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for results}"
: "${GPTFORGE_DATA_DIR:?set GPTFORGE_DATA_DIR to the folder holding tinyshakespeare.txt and gpt2.tiktoken}"
export GPTFORGE_DATA_DIR PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export GPTFORGE_CACHE_DIR="${GPTFORGE_CACHE_DIR:-/tmp/gptforge-cache}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
# DRY_RUN=1 rehearses the flagship and saves parts on the CPU with a tiny model (minutes, no GPU needed)
FLAGSHIP_ARGS=()
SAVES_ARGS=(--preset gpt2 --device cuda)
if [ "${DRY_RUN:-0}" = 1 ]; then
  FLAGSHIP_ARGS=(--device cpu --n-layer 2 --n-head 2 --n-embd 64 --block-size 64 --batch-size 4 --max-steps 8
                 --target-loss 6 --checkpoint-interval 4)
  SAVES_ARGS=(--preset gpt2-mini --device cpu)
fi
NANOGPT_DIR="${NANOGPT_DIR:-$PWD/../shared/peers/nanoGPT}"
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tests bench scaling flagship saves vs-nanogpt)

bench() {  # bench ARGS...: one line of JSON in bench.jsonl and the table in bench.txt
  local json
  json=$(mktemp)
  echo "== gptforge bench $*" | tee -a "$OUT/bench.txt"
  if "$PYTHON" -m gptforge bench "$@" --json "$json" 2>&1 | tee -a "$OUT/bench.txt"; then
    tr -d '\n' < "$json" >> "$OUT/bench.jsonl" && echo >> "$OUT/bench.jsonl"
  fi
  rm -f "$json"
}

flagship() {  # flagship NAME ARGS...: the recipe at 3 seeds; NAME.txt gets each seed's summary lines, and for
  # the plain recipe the first seed's run files come back as flagship-train.log etc. (the checkpoints do not)
  local name=$1 seed run
  shift
  for seed in 1337 1 2; do
    run=/tmp/gptforge-$name-$seed
    rm -rf "$run"
    "$PYTHON" -m gptforge train --preset shakespeare-gpt2 --seed "$seed" --no-progress --out "$run" \
      "$@" "${FLAGSHIP_ARGS[@]}" > "$run.out" 2>&1
    echo "== $name seed $seed (exit $?)" | tee -a "$OUT/$name.txt"
    grep -E "^(stopped|steps|tokens seen|target loss|training time|first step|wall time)" "$run/summary.txt" | tee -a "$OUT/$name.txt"
    grep -E "took .*s: torch.compile" "$run/train.log" | tee -a "$OUT/$name.txt"
  done
  [ "$name" = flagship ] || return 0
  for file in train.log metrics.jsonl curves.png summary.txt; do cp "/tmp/gptforge-$name-1337/$file" "$OUT/$name-$file"; done
}

for part in "${parts[@]}"; do
  case "$part" in
    tests)
      { nvidia-smi; "$PYTHON" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
        git log -1 --format='commit %H' 2>/dev/null
        "$PYTHON" -m pytest -q -rs -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_compile.py tests/test_muon.py \
          tests/test_chunked_loss.py
        "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/test_device.py tests/test_model.py tests/test_generate.py
      } 2>&1 | tee "$OUT/gpu-tests.txt" ;;
    bench)  # the issue's target: GPT-2 124M, T=1024, bf16, compiled
      for batch in 16 32 64; do
        bench --preset gpt2 --batch-size "$batch" --block-size 1024 --steps 30 --warmup 10 --generate-tokens 0
      done
      bench --preset gpt2 --batch-size 16 --block-size 1024 --steps 30 --warmup 10 --generate-tokens 0 --loss-chunks 8
      bench --preset gpt2 --batch-size 16 --block-size 1024 --steps 30 --warmup 10 --generate-tokens 0 --optimizer muon
      bench --preset gpt2 --batch-size 16 --steps 10 --warmup 5 --no-compile --generate-tokens 0
      bench --preset gpt2 --batch-size 1 --steps 0 --generate-tokens 256 ;;
    scaling)  # how cost grows with the model and with the context
      for preset in gpt2 gpt2-medium gpt2-large; do
        bench --preset "$preset" --batch-size 8 --block-size 1024 --steps 15 --warmup 8 --generate-tokens 0
      done
      for block in 256 512; do
        bench --preset gpt2 --batch-size $((8 * 1024 / block)) --block-size "$block" --steps 15 --warmup 8 \
          --generate-tokens 0
      done ;;
    flagship)  # shakespeare-gpt2 at 3 seeds: when the mean loss over a pass of the data first fell below 0.1
      flagship flagship ;;
    saves)  # how long a save of GPT-2 124M's 1.5 GB stops training, foreground and background
      "$PYTHON" benchmarks/bench_checkpoint_save.py "${SAVES_ARGS[@]}" --saves 3 2>&1 | tee "$OUT/saves.txt" ;;
    vs-nanogpt)  # the same GPT-2 124M step, gptforge's and nanoGPT's, interleaved in one process
      for extra in "" "--loss-chunks 8" "--optimizer muon"; do
        # shellcheck disable=SC2086  # $extra is zero or two words
        "$PYTHON" benchmarks/bench_vs_nanogpt.py --nanogpt-dir "$NANOGPT_DIR" --device cuda --preset gpt2 \
          --batch-size 16 --block-size 1024 --dtype bfloat16 --compile --steps 30 --warmup 10 $extra \
          --json /tmp/vs-nanogpt.json 2>&1 | tee -a "$OUT/vs-nanogpt.txt" \
          && cat /tmp/vs-nanogpt.json >> "$OUT/vs-nanogpt.jsonl"
      done ;;
    flagship-muon)  # the same with Muon, to compare tokens and time to the target with the flagship part's AdamW
      flagship flagship-muon --optimizer muon ;;
    *) echo "unknown part $part (tests, bench, scaling, flagship, saves, vs-nanogpt, flagship-muon)" >&2; exit 2 ;;
  esac
done
