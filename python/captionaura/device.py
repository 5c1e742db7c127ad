"""Where the C core computes: the CPU backend, or the CUDA backend (kernels/) when it was built and a device is
visible. ``model.to("cuda")`` moves a model's buffers; without a device it raises RuntimeError naming why."""

from __future__ import annotations

from captionaura import _core


def cuda_status() -> dict[str, object]:
    """The CUDA backend's state: ``compiled`` (built with nvcc/cuBLAS), ``device_count``, ``device`` (name and
    compute capability of device 0) and ``reason`` (why CUDA cannot be used; empty when it can)."""
    return dict(_core.cuda_status())


def cuda_available() -> bool:
    """True when the CUDA backend was compiled in and a CUDA device is visible (see ``cuda_status()``)."""
    status = cuda_status()
    return bool(status["compiled"]) and int(status["device_count"]) > 0


def normalize_device(device: str) -> str:
    """"cpu" or "cuda" ("cuda:0" is accepted: the backend uses device 0)."""
    name = str(device).strip().lower()
    if name in ("cpu", "cuda", "cuda:0"):
        return name.split(":")[0]
    raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")


def backend_device(backend: str) -> str:
    """The device of a core backend name ('cpu', 'cpu-profiled', 'cuda')."""
    return "cuda" if backend == "cuda" else "cpu"
