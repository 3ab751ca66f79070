"""Typed selection config: YAML -> validated objects. Unknown keys are errors that name the key.

Precedence: CLI overrides (``--set probe.epochs=2``) > YAML > the defaults below.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """An invalid config; the message names the field and how to fix it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetConfig(_Strict):
    source: str = Field("wordnet", description="wordnet | manpages | local file | hub id")
    path: str | None = None
    prompt_field: str | None = None
    target_field: str | None = None
    template: str | None = None
    group_field: str | None = None
    val_size: int = Field(64, ge=1)
    test_size: int = Field(64, ge=1)
    max_examples: int | None = Field(None, ge=1)
    seed: int = 0


class CandidateConfig(_Strict):
    name: str
    trust_remote_code: bool = False


class ProbeConfig(_Strict):
    method: Literal["lora", "full"] = "lora"
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = ["q_proj", "v_proj"]
    learning_rate: float = Field(2e-3, gt=0)
    epochs: int = Field(2, ge=1)
    max_steps: int | None = Field(None, ge=1)
    early_stopping_patience: int = Field(2, ge=1)
    batch_size: int = Field(8, ge=1)
    max_seq_len: int = Field(48, ge=8)
    seed: int = 0
    device: str = "auto"

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu") and not v.startswith("cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {v!r}")
        return v


class LadderConfig(_Strict):
    first_size: int = Field(32, ge=1)
    budget: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _doubling(self) -> LadderConfig:
        if self.budget < self.first_size:
            raise ValueError(
                f"ladder.budget ({self.budget}) is smaller than ladder.first_size "
                f"({self.first_size}); raise the budget or lower the first size"
            )
        ratio = self.budget // self.first_size
        if self.budget % self.first_size or ratio & (ratio - 1):
            raise ValueError(
                f"ladder.budget ({self.budget}) must be ladder.first_size ({self.first_size}) "
                "times a power of two (the ladder doubles)"
            )
        return self

    def sizes(self) -> list[int]:
        out = [self.first_size]
        while out[-1] < self.budget:
            out.append(out[-1] * 2)
        return out


class NtkConfig(_Strict):
    enabled: bool = True
    n_examples: int = Field(32, ge=2, description="probe-set size for the kernel")
    projection_dim: int | None = Field(None, ge=1, description="needed for method: full")
    rank_with_f: bool = Field(
        True, description="Lens ranks with the LensLLM law and F (else F is only reported)"
    )


class AdaptiveConfig(_Strict):
    """Adaptive probing: ``Lens`` decides which (candidate, size) probes to run."""

    enabled: bool = False
    compute_fraction: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="cap on probe compute as a fraction of the full ladder's "
        "(parameter count x examples)",
    )
    fraction_of_full_finetune: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="when set, the cap instead as a fraction of fine-tuning every candidate "
        "on target_size examples",
    )

    def ladder_fraction(self, target_size: int, ladder_sizes: list[int]) -> float:
        """The cap as a fraction of the full ladder's compute.

        Every candidate gets the same ladder, so parameter counts cancel: a fraction ``f`` of
        fine-tuning all candidates on ``target_size`` is ``f * target_size / sum(ladder)`` of
        the ladder (at most 1: the live ladder ends at the budget).
        """
        if self.fraction_of_full_finetune is None:
            return self.compute_fraction
        return min(1.0, self.fraction_of_full_finetune * target_size / sum(ladder_sizes))


class TrackingConfig(_Strict):
    uri: str | None = Field(None, description="MLflow tracking URI; default .lensllm/mlflow.db")
    experiment: str = "lensllm-selection"


class RegistryConfig(_Strict):
    enabled: bool = True
    model_name: str = "lensllm-selected"
    margin: float = Field(0.0, ge=0.0)


class RunnerConfig(_Strict):
    """Where probes run (see ``flows.runners``).

    ``thread``: a pool in the flow's process (the default). ``dask`` (prefect-dask): a local
    cluster of ``max_workers`` single-threaded worker processes, or the existing scheduler at
    ``address``. ``ray`` (prefect-ray): a local Ray with ``max_workers`` CPUs, or the existing
    cluster at ``address``. An existing cluster's workers must see ``cache_dir`` (the
    fine-tuned weights of the budget probes are saved there) and the result storage.
    """

    kind: Literal["thread", "dask", "ray"] = "thread"
    max_workers: int | None = Field(
        None,
        ge=1,
        description="probes at once; unset: 1 for thread, the local core count for dask/ray",
    )
    address: str | None = Field(
        None,
        min_length=1,
        description="existing Dask scheduler (tcp://host:8786) or Ray cluster (ray://host:10001)",
    )

    @model_validator(mode="after")
    def _cross(self) -> RunnerConfig:
        if self.address is not None and self.kind == "thread":
            raise ValueError(
                f"runner.address ({self.address!r}) names an existing Dask or Ray cluster: set "
                "runner.kind to dask or ray, or remove runner.address"
            )
        if self.address is not None and self.max_workers is not None:
            raise ValueError(
                "runner.max_workers sizes the cluster the runner starts; with runner.address "
                "the existing cluster's workers decide: remove one of the two"
            )
        return self


class SelectionConfig(_Strict):
    name: str = Field("demo", description="task key: what the registry compares champions on")
    dataset: DatasetConfig = DatasetConfig()
    candidates: list[CandidateConfig]
    probe: ProbeConfig = ProbeConfig()
    ladder: LadderConfig = LadderConfig()
    ntk: NtkConfig = NtkConfig()
    adaptive: AdaptiveConfig = AdaptiveConfig()
    target_size: int = Field(4096, ge=1)
    selector: str = "Lens"
    rank_on: Literal["bits_per_byte", "loss_per_token"] = "bits_per_byte"
    tracking: TrackingConfig = TrackingConfig()
    registry: RegistryConfig = RegistryConfig()
    runner: RunnerConfig = RunnerConfig()
    cache_dir: str = ".lensllm"

    @field_validator("candidates", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"name": c} if isinstance(c, str) else c for c in v]
        return v

    @model_validator(mode="after")
    def _cross(self) -> SelectionConfig:
        if len(self.candidates) < 2:
            raise ValueError("candidates: list at least 2 models to select from")
        names = [c.name for c in self.candidates]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"candidates: duplicate names {dupes}; list each model once")
        if self.ntk.enabled and self.probe.method == "full" and not self.ntk.projection_dim:
            raise ValueError(
                "ntk.projection_dim is required with probe.method: full (the kernel over all "
                "weights needs a random projection to bound memory), or set ntk.enabled: false"
            )
        if self.target_size < self.ladder.budget:
            raise ValueError(
                f"target_size ({self.target_size}) is smaller than ladder.budget "
                f"({self.ladder.budget}); the target is the full data size to predict"
            )
        self._check_selection_settings()
        return self

    def _check_selection_settings(self) -> None:
        """The selector exists and an adaptive cap fits the ladder (deployment runs, which
        skip the CLI, get the same errors before any probe)."""
        from lens_model.selectors import SELECTORS
        from tasks.live_probes import adaptive_settings

        try:
            SELECTORS.get(self.selector)
        except KeyError as err:
            raise ValueError(f"selector: {err.args[0]}") from None
        if self.adaptive.enabled:
            sizes = self.ladder.sizes()
            fraction = self.adaptive.ladder_fraction(self.target_size, sizes)
            adaptive_settings(sizes, self.ladder.budget, fraction)

    def data_kwargs(self) -> dict:
        """Keyword arguments of ``tasks.data.prepare_data`` for this config."""
        d = self.dataset
        return {
            "source": d.source,
            "path": d.path,
            "prompt_field": d.prompt_field,
            "target_field": d.target_field,
            "template": d.template,
            "group_field": d.group_field,
            "val_size": d.val_size,
            "test_size": d.test_size,
            "first_size": self.ladder.first_size,
            "budget": self.ladder.budget,
            "seed": d.seed,
            "max_examples": d.max_examples,
        }

    def resolved_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def config_hash(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _apply_override(data: dict, dotted: str) -> None:
    if "=" not in dotted:
        raise ConfigError(f"override {dotted!r} must look like key.sub=value")
    key, raw = dotted.split("=", 1)
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def load_config(path: str | None, overrides: list[str] | None = None) -> SelectionConfig:
    """Load and validate a selection config; ``overrides`` are ``key.sub=value`` strings."""
    data: dict = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file {path!r} does not exist")
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path!r} is not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path!r} must hold a mapping at the top level")
    for item in overrides or []:
        _apply_override(data, item)
    try:
        return SelectionConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_explain(err, path)) from None


def _explain(err: ValidationError, path: str | None) -> str:
    lines = [f"invalid config{f' {path}' if path else ''}:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - unknown key {where!r}: remove it or check its spelling")
        elif e["type"] == "missing":
            lines.append(f"  - missing required key {where!r}")
        else:
            lines.append(f"  - {where}: {e['msg']}")
    return "\n".join(lines)
