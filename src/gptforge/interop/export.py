"""`gptforge export`: which writer each --format uses, which flags it takes, and how the hub receives it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gptforge.errors import UserError
from gptforge.interop.hub import HubTarget
from gptforge.interop.space_hardware import DEFAULT_HARDWARE, HARDWARE

if TYPE_CHECKING:  # the CLI imports this module to build its parser, before torch is needed
    from gptforge.trained_model import TrainedModel

FORMATS = ("space", "hf", "onnx", "static-space")
ONNX_FORMATS = ("onnx", "static-space")


def check_export_flags(fmt: str, hardware: str | None, int8: bool = False) -> None:
    """Refuse flags the format does not take, before anything is loaded or written."""
    if hardware is not None and fmt != "space":
        raise UserError(f"--hardware is for --format space (a Gradio Space), not --format {fmt}")
    if int8 and fmt not in ONNX_FORMATS:
        raise UserError(f"--int8 is for the ONNX formats ({', '.join(ONNX_FORMATS)}), not --format {fmt}")


def export_model(trained: TrainedModel, fmt: str, out: Path, hardware: str | None = None, int8: bool = False) -> str:
    """Write `trained` as `fmt` into the new folder `out`; returns what to tell the user."""
    if fmt == "onnx":
        from gptforge.interop.onnx_export import export_onnx

        export_onnx(trained, out, int8=int8)
        return f"wrote {out} (model.onnx{' and model.int8.onnx' if int8 else ''} with a KV cache, for onnxruntime)"
    if fmt == "static-space":
        from gptforge.interop.static_space import export_static_space

        export_static_space(trained, out, int8=int8)
        return f"wrote {out} (a static Space: the model runs in the visitor's browser; any account can host it)"
    if fmt == "hf":
        from gptforge.interop.hf_export import export_hf

        export_hf(trained, out)
        return f"wrote {out} (load it with transformers' GPT2LMHeadModel and AutoTokenizer .from_pretrained)"
    from gptforge.interop.space import export_space

    chosen = hardware or DEFAULT_HARDWARE
    export_space(trained, out, chosen)
    return f"wrote {out} (a Gradio Space for {HARDWARE[chosen].flavor}: {HARDWARE[chosen].plan})"


def hub_target(fmt: str, hardware: str | None = None) -> HubTarget:
    if fmt in ("hf", "onnx"):
        return HubTarget("model")
    if fmt == "static-space":
        return HubTarget("space", "static")
    return HubTarget("space", "gradio", HARDWARE[hardware or DEFAULT_HARDWARE].flavor)
