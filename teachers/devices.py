"""Where the models run: `--device auto|cpu|cuda|cuda:N` resolved to a usable torch device, never a
silent CPU fallback when CUDA was asked for, and the facts a run records about the device.

A CUDA build of torch on a machine whose driver is older than the build needs (a CUDA 13 wheel on a
CUDA 12 driver) may report `is_available()` False, or report True and fail on the first kernel: both
are caught here with a tiny CUDA operation, before any model is loaded.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from typing import Any

import torch

logger = logging.getLogger(__name__)

DEVICE_HELP = "auto (the GPU when CUDA works, else the CPU with a warning), cpu, cuda or cuda:N"
# Substrings of the messages torch and the CUDA libraries raise once a process's CUDA context is broken
# or out of memory; such a process should end rather than retry its work.
_FATAL_CUDA_MARKERS = (
    "cuda error",
    "cuda out of memory",
    "cublas_status",
    "cudnn_status",
    "cudnn error",
    "cufft_internal_error",
    "cusolver_status",
    "device-side assert",
    "illegal memory access",
    "nccl error",
    "no kernel image is available",
    "cuda driver",
)


class DeviceError(ValueError):
    """A requested device that cannot run here (no usable CUDA, no such GPU, a malformed name)."""


def parse_device(text: str) -> str:
    """Checks the spelling of a `--device` value (argparse `type=`); usability is checked on the worker."""
    value = text.strip().lower()
    if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise DeviceError(f"--device must be {DEVICE_HELP}, not {text!r}")


def cuda_problem(device: torch.device) -> str | None:
    """Why `device` (a CUDA device) cannot run here, or None when a tiny operation on it succeeds."""
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            return f"torch.cuda.is_available() is False: torch {torch.__version__} is a CPU-only build"
        return (
            f"torch.cuda.is_available() is False (torch {torch.__version__} built for CUDA "
            f"{torch.version.cuda}; {_driver_summary()}): no GPU, no NVIDIA driver, or a driver "
            "older than this torch build needs"
        )
    count = torch.cuda.device_count()
    index = 0 if device.index is None else device.index
    if index >= count:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return f"cuda:{index} asked for but {count} GPU(s) are visible (CUDA_VISIBLE_DEVICES={visible})"
    try:
        probe = torch.arange(4, dtype=torch.float32, device=torch.device("cuda", index))
        if float((probe * 2).sum().cpu()) != 12.0:
            return "a tiny CUDA operation returned a wrong result"
    except Exception as error:  # mostly RuntimeError, with the CUDA driver's own words
        return (
            f"a tiny CUDA operation failed ({type(error).__name__}: {error}); torch {torch.__version__} "
            f"is built for CUDA {torch.version.cuda}, {_driver_summary()}"
        )
    return None


def resolve_device(requested: str, *, worker_index: int | None = None) -> torch.device:
    """The device to run on; raises DeviceError for an explicit CUDA device that cannot run.

    `auto` takes this process's GPU when CUDA works and otherwise the CPU, saying so in a warning.
    `cuda` and `auto` pick one of the visible GPUs for this process (see `worker_gpu_index`) and make
    it the current device, so that code which says plain "cuda" uses the same one.
    """
    value = parse_device(requested)
    if value == "cpu":
        return torch.device("cpu")
    device = torch.device("cuda" if value == "auto" else value)
    if device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", worker_gpu_index(torch.cuda.device_count(), worker_index))
    problem = cuda_problem(device)
    if problem is not None:
        if value == "auto":
            logger.warning("--device auto: %s; running on the CPU", problem)
            return torch.device("cpu")
        raise DeviceError(f"--device {requested}: {problem}. Use --device cpu to run on the CPU.")
    torch.cuda.set_device(device)
    return device


def worker_gpu_index(device_count: int, worker_index: int | None = None) -> int:
    """Which visible GPU a worker process takes: worker `i` gets GPU `i mod count`.

    The visible GPUs are those CUDA_VISIBLE_DEVICES leaves (torch counts only those), so a launcher
    that gives each process its own GPU that way is respected: each process sees one GPU and takes
    it. Without an explicit index the process id spreads processes started together over the GPUs.
    """
    if device_count < 1:
        raise DeviceError("no visible GPU to bind this worker to")
    index = os.getpid() if worker_index is None else worker_index
    if index < 0:
        raise ValueError(f"worker index must be >= 0, not {index}")
    return index % device_count


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device` without making the host wait for the device's queue.

    A copy from ordinary (pageable) memory to a GPU blocks until the GPU has finished everything
    queued before it; from pinned memory it is queued like any kernel, so the host goes on preparing
    the next work meanwhile.
    """
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    if not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def device_kind(device: str | torch.device) -> str:
    """What config.json records: "cpu" or "cuda" (their embeddings differ in the last bits)."""
    return torch.device(device).type


def device_facts(device: str | torch.device) -> dict[str, Any]:
    """What a run's stats record about where it ran, so numbers can be traced to hardware and settings."""
    device = torch.device(device)
    facts: dict[str, Any] = {
        "device": str(device),
        "kind": device.type,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
    }
    if device.type == "cpu":
        facts["cpu_threads"] = torch.get_num_threads()
        return facts
    props = torch.cuda.get_device_properties(device)
    facts.update(
        gpu_name=props.name,
        gpu_capability=f"{props.major}.{props.minor}",
        gpu_memory_gib=round(props.total_memory / 2**30, 1),
        driver=_driver_release(),
        driver_cuda=_driver_cuda_version(),
        cudnn=torch.backends.cudnn.version(),
    )
    return facts


def is_fatal_cuda_error(error: BaseException) -> bool:
    """True for CUDA failures (out of memory, a broken context, a device-side assert), also when wrapped.

    After one of these a process's CUDA state cannot be trusted; the job should end the worker process
    so the runner starts a fresh one, instead of retrying the shard in the same process.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (torch.OutOfMemoryError, torch.AcceleratorError)):
            return True
        message = str(current).lower()
        if isinstance(current, RuntimeError) and any(marker in message for marker in _FATAL_CUDA_MARKERS):
            return True
        current = current.__cause__ or current.__context__
    return False


def _driver_release() -> str | None:
    """The NVIDIA kernel driver's version (e.g. 550.54.15), read where the driver publishes it."""
    try:
        with open("/proc/driver/nvidia/version") as handle:
            match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", handle.read())
    except OSError:
        return None
    return match.group(1) if match else None


def _driver_cuda_version() -> str | None:
    """The newest CUDA version the installed driver supports (cuDriverGetVersion), e.g. "12.4"."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        version = ctypes.c_int()
        if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def _driver_summary() -> str:
    release, supported = _driver_release(), _driver_cuda_version()
    if release is None and supported is None:
        return "no NVIDIA driver found"
    return f"driver {release or 'unknown'} supports CUDA up to {supported or 'unknown'}"
