"""Which device a worker runs its models on (pure; torch is asked by the caller)."""

from __future__ import annotations


def resolve_device(setting: str, cuda_available: bool, cuda_count: int) -> str:
    """Turn WORKER_DEVICE (auto, cpu, cuda, cuda:N) into a concrete device.

    `auto` takes the first GPU when there is one, else the CPU; asking for a
    GPU that is not there is an error, not a silent fallback to the CPU.
    """
    setting = setting.lower()
    if setting == "cpu":
        return "cpu"
    if setting == "auto":
        return "cuda:0" if cuda_available and cuda_count > 0 else "cpu"
    index = 0 if setting == "cuda" else int(setting.split(":", 1)[1])
    if not cuda_available or index >= cuda_count:
        raise ValueError(
            f"WORKER_DEVICE={setting} but this machine has {cuda_count if cuda_available else 0} CUDA device(s)"
        )
    return f"cuda:{index}"


def detect_device(setting: str) -> str:
    """resolve_device() against the torch of this process."""
    import torch

    available = torch.cuda.is_available()
    return resolve_device(setting, available, torch.cuda.device_count() if available else 0)
