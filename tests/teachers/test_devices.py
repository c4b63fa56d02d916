"""Device choice without a GPU: CUDA's answers are mocked, except where the real CUDA call must fail."""

from __future__ import annotations

import logging

import pytest
import torch

from teachers import devices
from teachers.devices import (
    DeviceError,
    device_facts,
    device_kind,
    host_to_device,
    is_fatal_cuda_error,
    resolve_device,
)


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> list[torch.device]:
    """A machine where CUDA works with 4 visible GPUs; returns the devices made current, in order."""
    current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(devices, "cuda_problem", lambda device: None)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    return current


def test_cpu_is_the_cpu_and_bad_names_are_refused() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "cuda:-1", "mps", ""):
        with pytest.raises(DeviceError, match="--device must be"):
            resolve_device(bad)


def test_explicit_cuda_without_cuda_fails_fast_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for requested in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match=r"is_available\(\) is False.*--device cpu"):
            resolve_device(requested)


def test_explicit_cuda_whose_first_kernel_fails_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA build on a machine whose driver cannot run it: is_available() may still say True."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail("bound a broken GPU"))
    with pytest.raises(DeviceError, match="a tiny CUDA operation failed"):
        resolve_device("cuda")  # the real CUDA call runs and fails: this machine has no driver


def test_a_gpu_index_beyond_the_visible_ones_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    with pytest.raises(DeviceError, match=r"cuda:2 asked for but 2 GPU\(s\) are visible.*4,5"):
        resolve_device("cuda:2")


def test_auto_falls_back_to_the_cpu_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="teachers.devices"):
        assert resolve_device("auto") == torch.device("cpu")
    assert "running on the CPU" in caplog.text and "is_available() is False" in caplog.text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="teachers.devices"):
        assert resolve_device("auto") == torch.device("cpu")  # the tiny CUDA op fails here
    assert "a tiny CUDA operation failed" in caplog.text


def test_worker_processes_spread_over_the_visible_gpus(gpus: list[torch.device]) -> None:
    chosen = [resolve_device("cuda", worker_index=i) for i in range(6)]
    assert [d.index for d in chosen] == [0, 1, 2, 3, 0, 1]
    assert gpus == chosen  # each becomes its process's current device
    assert resolve_device("auto", worker_index=7) == torch.device("cuda", 3)
    assert resolve_device("cuda:2", worker_index=0) == torch.device("cuda", 2)  # an explicit GPU wins
    # Without an index the process id decides: the same process always gets the same GPU.
    assert resolve_device("cuda").index == resolve_device("auto").index == devices.os.getpid() % 4


def test_a_process_given_one_gpu_by_cuda_visible_devices_takes_it(
    gpus: list[torch.device], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launcher set CUDA_VISIBLE_DEVICES=3 for this process: torch then sees exactly one GPU."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert {resolve_device("cuda", worker_index=i) for i in range(5)} == {torch.device("cuda", 0)}


def test_device_kind_and_cpu_facts() -> None:
    assert (
        device_kind("cpu") == "cpu" and device_kind("cuda:1") == device_kind(torch.device("cuda")) == "cuda"
    )
    facts = device_facts("cpu")
    assert facts["device"] == "cpu" and facts["kind"] == "cpu"
    assert facts["torch"] == torch.__version__ and facts["cpu_threads"] == torch.get_num_threads()
    assert facts["tf32_matmul"] is torch.backends.cuda.matmul.allow_tf32
    assert facts["float32_matmul_precision"] == torch.get_float32_matmul_precision()


def test_gpu_facts_name_the_gpu_and_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    class Properties:
        name, major, minor, total_memory = "NVIDIA L4", 8, 9, 24 * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Properties())
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91000)
    monkeypatch.setattr(devices, "_driver_release", lambda: "580.82.07")
    monkeypatch.setattr(devices, "_driver_cuda_version", lambda: "13.0")
    facts = device_facts("cuda:0")
    assert facts["device"] == "cuda:0" and facts["kind"] == "cuda"
    assert (facts["gpu_name"], facts["gpu_capability"], facts["gpu_memory_gib"]) == ("NVIDIA L4", "8.9", 24.0)
    assert (facts["driver"], facts["driver_cuda"], facts["cudnn"]) == ("580.82.07", "13.0", 91000)
    assert "tf32_cudnn" in facts and "cpu_threads" not in facts


def test_cuda_failures_end_the_worker_other_errors_do_not() -> None:
    fatal = [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        torch.AcceleratorError("CUDA error: an illegal memory access was encountered"),
        RuntimeError("CUDA error: device-side assert triggered"),
        RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, ...)`"),
        RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"),
    ]
    for error in fatal:
        assert is_fatal_cuda_error(error), error
    try:
        try:
            raise RuntimeError("CUDA error: unspecified launch failure")
        except RuntimeError as cause:
            raise ValueError("shard 00000003 failed") from cause
    except ValueError as wrapped:
        assert is_fatal_cuda_error(wrapped)
    harmless = [
        ValueError("views must be uint8 [B, 3, H, W]"),
        RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)"),
        KeyError("cuda"),
    ]
    for error in harmless:
        assert not is_fatal_cuda_error(error), error


class _HostTensor:
    """Stands in for a CPU tensor; records what is done to it on the way to a GPU."""

    def __init__(self, calls: list[str], pinned: bool = False) -> None:
        self.calls, self.pinned, self.device = calls, pinned, torch.device("cpu")

    def is_pinned(self) -> bool:
        return self.pinned

    def pin_memory(self) -> _HostTensor:
        self.calls.append("pin")
        return _HostTensor(self.calls, pinned=True)

    def to(self, device: torch.device, non_blocking: bool = False) -> str:
        self.calls.append(f"to {device} non_blocking={non_blocking} from pinned={self.pinned}")
        return "on the GPU"


def test_copies_to_a_gpu_go_through_pinned_memory_and_do_not_wait() -> None:
    calls: list[str] = []
    gpu = torch.device("cuda", 1)
    assert host_to_device(_HostTensor(calls), gpu) == "on the GPU"
    assert calls == ["pin", "to cuda:1 non_blocking=True from pinned=True"]
    calls.clear()
    host_to_device(_HostTensor(calls, pinned=True), gpu)  # already pinned (a pinned feed buffer)
    assert calls == ["to cuda:1 non_blocking=True from pinned=True"]
    cpu = torch.arange(3)
    assert host_to_device(cpu, torch.device("cpu")) is cpu  # the CPU path copies nothing
    assert host_to_device(cpu, torch.device("meta")).device.type == "meta"


def test_a_cpu_only_torch_build_is_named_as_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(DeviceError, match="is a CPU-only build"):
        resolve_device("cuda")
