"""Where tensors go (CUDA when present, else CPU) and in which precision the generator runs there."""

from __future__ import annotations

import torch


def pick_device(prefer: str | None = None) -> torch.device:
    """`prefer` ('cpu', 'cuda', 'cuda:1') if given, else CUDA when available, else CPU."""
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


PRECISIONS = ("auto", "fp32", "bf16")
RESOLVED_PRECISIONS = ("fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively: a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX (oneDNN)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        try:
            return bool(check()) if check is not None else False
        except RuntimeError:
            return False
    return False


def use_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Whether the generator runs under bf16 autocast: "bf16" always, "fp32" never, "auto" where `native_bf16`."""
    return resolve_precision(precision, precision == "auto" and native_bf16(device)) == "bf16"


def resolve_precision(precision: str, native: bool) -> str:
    """`precision` as one of RESOLVED_PRECISIONS: "auto" becomes "bf16" where the device computes bf16 natively
    (`native`, from `native_bf16` on the device that will run it), else "fp32"; "fp32" and "bf16" stay."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if native else "fp32"


def local_native_bf16() -> bool:
    """Whether this process's device (CUDA when present, else the CPU) computes bf16 natively."""
    return native_bf16(pick_device())
