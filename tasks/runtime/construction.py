"""One lock for building torch models in this process.

transformers instantiates a model inside ``local_torch_dtype``, which sets torch's process-wide
default dtype and restores, on exit, the dtype it found on entry. Two constructions at once in
two threads (a bf16 probe loading while the flow describes another candidate on the meta
device, say) interleave those sets and restores: one model gets the other's dtype, or the
process keeps bfloat16 as its default after both are done. Every construction of a model in
this project holds this lock, and leaves the default at float32, the only default the project
runs with.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.RLock()


@contextmanager
def model_construction() -> Iterator[None]:
    """Hold the process's model-construction lock; on release torch's default dtype is
    float32 again, whatever the construction did to it."""
    import torch  # here: the model store imports this module without needing torch

    with _LOCK:
        try:
            yield
        finally:
            torch.set_default_dtype(torch.float32)
