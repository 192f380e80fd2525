"""Where tensors go: CUDA when present, else CPU."""

from __future__ import annotations

import torch


def pick_device(prefer: str | None = None) -> torch.device:
    """`prefer` ('cpu', 'cuda', 'cuda:1') if given, else CUDA when available, else CPU."""
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
