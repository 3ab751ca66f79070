"""Shared fixtures: a Prefect test harness, a small synthetic loss table, probe results."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lens_model.loss_table import LossTable
from tasks.records.schema import ProbeResult

TARGET_SIZE = 1_638_400
LADDER = np.array([0] + [200 * 2**i for i in range(14)], dtype=float)  # 0, 200, ..., 1638400


def rectified_loss(sizes, b, d_l, beta, e) -> np.ndarray:
    """L(D) = B / (D_l + D^beta) + E for every (model, size); parameters are (N,) arrays."""
    d = np.asarray(sizes, dtype=float)[None, :]
    b, d_l, beta, e = (np.asarray(v, dtype=float)[:, None] for v in (b, d_l, beta, e))
    return b / (d_l + d**beta) + e


def probe_result(name: str, size: int, loss: float, **changes) -> ProbeResult:
    """A measured probe of ``name`` at ``size`` examples with ``loss`` bits per byte (the other
    fields plausible); ``changes`` override any field (e.g. ``diverged=True``)."""
    values = {
        "candidate": name,
        "size": size,
        "test_bits_per_byte": loss,
        "test_loss_per_byte": loss * math.log(2),
        "test_loss": loss * 1.3,
        "test_tokens": 100,
        "test_bytes": 130,
        "train_loss_last": loss,
        "steps": size // 8,
        "forward_params": 1000,
        "method": "lora" if size else "zero-shot",
        "learning_rate": 2e-3,
        "n_train": size,
        "n_val": 16,
        "n_test": 16,
        "device": "cpu",
        "dtype": "float32",
    }
    return ProbeResult(**{**values, **changes})


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API and database for flow tests (cold start ~20 s, once a session)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def rectified_case(
    sizes, *, n: int, seed: int, b=(30, 300), d_l=(5, 200), name: str = "SYNTH"
) -> tuple[LossTable, dict[str, np.ndarray]]:
    """``n`` rectified-law curves on ``sizes`` with 0.3 % noise, as a loss table, and the true
    law parameters (``b``, ``d_l``, ``beta``, ``e``, one per model). ``b`` and ``d_l`` are
    the ranges their parameters are drawn from."""
    rng = np.random.default_rng(seed)
    params = {
        "b": rng.uniform(*b, n),
        "d_l": rng.uniform(*d_l, n),
        "beta": rng.uniform(0.3, 0.7, n),
        "e": rng.uniform(0.6, 1.6, n),
    }
    losses = rectified_loss(sizes, **params) * np.exp(0.003 * rng.standard_normal((n, len(sizes))))
    table = LossTable(
        name=name,
        models=[f"org/model-{i}" for i in range(n)],
        sizes=np.asarray(sizes).astype(int),
        losses=losses,
        model_sizes=rng.uniform(1e8, 7e9, n).round(),
        families=["a", "b"] * (n // 2),
    )
    return table, params


def rectified_table(sizes, **kwargs) -> LossTable:
    """The table of :func:`rectified_case`."""
    return rectified_case(sizes, **kwargs)[0]


@pytest.fixture(scope="session")
def synthetic_table() -> LossTable:
    """Eight rectified-law curves on the FLAN ladder (0, 200, ..., 1638400), 0.3 % noise."""
    return rectified_table(LADDER, n=8, seed=7)


@pytest.fixture(scope="session")
def synthetic_params() -> dict[str, np.ndarray]:
    """The true law parameters of ``synthetic_table``'s curves."""
    return rectified_case(LADDER, n=8, seed=7)[1]


def make_selector(name: str, n_models: int, **settings):
    """A registered selector by name; ``NLPMetrics`` gets made-up weight-spectrum values (one
    per model: a loss table has no weights) so that every selector can run on a table."""
    from lens_model.selectors import SELECTORS

    if name == "NLPMetrics":
        settings.setdefault("values", [float(i % 3) for i in range(n_models)])
    return SELECTORS.get(name)(**settings)
