import json

import pytest
import torch

from conftest import FakeClock
from gptforge import bench
from gptforge.cli import main
from gptforge.config import MODEL_PRESETS, GPTConfig


def test_flops_per_token_of_gpt2_124m() -> None:
    config = GPTConfig(block_size=1024, vocab_size=50304, n_layer=12, n_head=12, n_embd=768)
    parameters = 124_475_904
    # 6 x (parameters without the 1024 x 768 position table) + 12 x 12 layers x 768 x 1024
    assert bench.flops_per_token(config, parameters) == 6 * (124_475_904 - 786_432) + 12 * 12 * 768 * 1024
    assert bench.flops_per_token(config, parameters) == 855_383_040


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H200", 989.0), ("NVIDIA A100-SXM4-40GB", 312.0),
    ("NVIDIA L4", 121.0), ("Tesla T4", 65.0), ("NVIDIA GeForce RTX 3090", None),
])
def test_known_gpu_peaks(monkeypatch, name, peak) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert bench.known_peak_tflops(torch.device("cuda")) == peak
    assert bench.known_peak_tflops(torch.device("cpu")) is None


def test_bench_cli_measures_and_writes_consistent_json(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    code = main(["bench", "--preset", "tiny", "--device", "cpu", "--batch-size", "4", "--grad-accum", "2",
                 "--steps", "3", "--warmup", "1", "--generate-tokens", "8", "--peak-tflops", "0.5",
                 "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    result = json.loads(out.read_text())
    block = MODEL_PRESETS["tiny"].block_size
    assert result["block_size"] == block and result["grad_accum"] == 2 and result["dtype"] == "float32"
    assert result["tokens_per_s"] == pytest.approx(4 * block * 2 / (result["step_ms"] / 1000))
    assert result["mfu"] == pytest.approx(result["flops_per_token"] * result["tokens_per_s"] / 0.5e12)
    assert result["cached_tokens_per_s"] > 0 and result["uncached_tokens_per_s"] > 0
    assert result["peak_memory_gb"] > 0
    assert result["first_step_s"] > 0
    assert "training throughput" in printed and "with the KV cache" in printed and "first step" in printed


def test_bench_says_what_it_measures_and_each_step_as_it_ends(monkeypatch, capsys) -> None:
    """A big model on a CPU is minutes of work: the run says so first, then prints every step's time."""
    monkeypatch.setattr(bench, "CPU_HEAVY_PARAMETERS", 1_000)  # the tiny model counts as big here
    code = main(["bench", "--preset", "tiny", "--device", "cpu", "--batch-size", "2", "--steps", "2", "--warmup", "1",
                 "--generate-tokens", "4"])
    err = capsys.readouterr().err
    assert code == 0
    lines = err.splitlines()
    assert lines[0].startswith("bench: tiny (") and "1 warm-up and 2 timed steps" in lines[0]
    assert lines[1].startswith("note: tiny is a GPU benchmark") and "--preset tiny" in lines[1]
    assert [line.split(":")[0] for line in lines[2:5]] == ["step 1/3 (warm-up)", "step 2/3 (timed)",
                                                          "step 3/3 (timed)"]
    assert lines[5].startswith("generating 4 tokens")


def test_bench_of_a_small_model_has_no_cpu_note(capsys) -> None:
    assert main(["bench", "--preset", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "0",
                 "--generate-tokens", "0"]) == 0
    assert "note:" not in capsys.readouterr().err


def test_the_first_step_is_timed_apart_and_warm_up_steps_stay_out_of_the_median(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(bench.time, "perf_counter", clock)  # a step lasts what it says, however busy the machine

    class SlowStart:
        device = torch.device("cpu")

        def __init__(self) -> None:
            self.durations = iter([0.3, 0.2, 0.01, 0.03, 0.02])

        def train_step(self) -> None:
            clock.advance(next(self.durations))

    first, median = bench.time_training(SlowStart(), steps=3, warmup=2)
    assert first == pytest.approx(0.3) and median == pytest.approx(0.02)


def exit_code(argv: list[str]) -> int:
    """main's return value, or the status argparse exits with."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("args", [
    ["--steps", "-1"], ["--steps", "0", "--generate-tokens", "0"], ["--attention", "magic"],
    ["--batch-size", "0"], ["--n-embd", "30", "--n-head", "4"], ["--device", "tpu"],
])
def test_bench_bad_input_is_one_error_line(capsys, args) -> None:
    device = [] if "--device" in args else ["--device", "cpu"]
    assert exit_code(["bench", "--preset", "tiny", "--steps", "1", *device, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err
