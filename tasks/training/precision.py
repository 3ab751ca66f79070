"""Where a probe runs and in which number format (``probe.device``, ``probe.precision``).

``probe.precision`` is ``auto``, ``fp32`` or ``bf16``. ``auto`` is bf16 where the device computes
it fast: CUDA with bf16 support, or a CPU whose flags show AMX-BF16 or AVX512-BF16 (oneDNN then
runs bf16 matmuls several times faster than fp32); fp32 elsewhere. A selection resolves it once,
before any probe (:func:`resolved_spec`), so every probe of it, the winner's training at the
target, the cache keys, the MLflow runs and the registered version carry the precision that ran.

What bf16 means depends on the method:

- ``lora``: the frozen base weights are held in bf16; the adapter weights, their gradients and
  optimizer state and the loss reduction stay fp32 (peft keeps adapters in fp32).
- ``full``: fp32 master weights and optimizer state; forward and backward under bf16 autocast.

Evaluation runs in the same format as training.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from tasks.records.errors import ConfigError
from tasks.records.schema import ProbeSpec

BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def select_device(device: str = "auto") -> torch.device:
    """The torch device of ``probe.device``; ``auto`` prefers CUDA."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available here.")
    return torch.device(device)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags, as the kernel reports them (empty where there is no
    ``/proc/cpuinfo``: such a CPU counts as one without fast bf16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 fast (CUDA with bf16; a CPU with AMX or AVX512-BF16)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(cpu_flags() & BF16_CPU_FLAGS)


def resolve_precision(requested: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for ``probe.precision`` = ``requested`` on ``device``."""
    if requested == "fp32":
        return "fp32"
    fast = bf16_supported(device)
    if requested == "auto":
        return "bf16" if fast else "fp32"
    if not fast:
        what = "this GPU" if device.type == "cuda" else "this CPU (no amx_bf16 or avx512_bf16 flag)"
        raise ConfigError(
            f"probe.precision: bf16 was asked for, but {what} has no fast bf16: "
            "set probe.precision to auto or fp32"
        )
    return "bf16"


def resolved_spec(spec: ProbeSpec) -> ProbeSpec:
    """``spec`` with ``precision`` resolved on its device (what a selection probes with)."""
    precision = resolve_precision(spec.precision, select_device(spec.device))
    return spec if precision == spec.precision else spec.model_copy(update={"precision": precision})


def bf16_unavailable(spec: ProbeSpec) -> str | None:
    """Why ``spec``'s device cannot probe in bf16 (the error a selection asking for it would
    get), or None where it can. Benchmarks use it to leave bf16 out instead of stopping."""
    try:
        resolve_precision("bf16", select_device(spec.device))
    except ConfigError as err:
        return str(err)
    return None


@dataclass(frozen=True)
class Precision:
    """How a probe computes: ``name`` (fp32/bf16), the dtype its model weights are loaded in
    and the autocast dtype of its forward passes (None: none)."""

    name: str
    weights: torch.dtype = torch.float32
    autocast: torch.dtype | None = None

    @property
    def label(self) -> str:
        """What a probe result records as its ``dtype``."""
        if self.autocast is not None:
            return "bfloat16-autocast"
        return "bfloat16-weights" if self.weights == torch.bfloat16 else "float32"


def probe_precision(spec: ProbeSpec) -> tuple[torch.device, Precision]:
    """The device of ``spec`` and how its probes compute there (see the module docstring)."""
    device = select_device(spec.device)
    if resolve_precision(spec.precision, device) == "fp32":
        return device, Precision("fp32")
    if spec.method == "lora":
        return device, Precision("bf16", weights=torch.bfloat16)
    return device, Precision("bf16", autocast=torch.bfloat16)
