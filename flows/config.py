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

from tasks.records.errors import ConfigError
from tasks.records.schema import DataSpec, IntervalSpec, Ladder, NtkSpec, ProbeSpec, SpectralSpec

__all__ = ["ConfigError", "SelectionConfig", "load_config", "check_selector"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CandidateConfig(_Strict):
    name: str
    trust_remote_code: bool = False


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
    """Registration and the promotion gate (measured loss on the current test split)."""

    enabled: bool = True
    model_name: str = "lensllm-selected"
    margin: float = Field(
        0.0, ge=0.0, description="the challenger's measured loss must be lower by more than this"
    )
    min_confidence: float = Field(
        0.9, ge=0.0, le=1.0, description="paired-bootstrap P(challenger better) required"
    )


class ValidateConfig(_Strict):
    """Check the selection against reality: the top ``top_k`` candidates are fine-tuned on
    ``target_size`` examples with the probes' recipe and measured on the test split."""

    top_k: int = Field(1, ge=0, description="candidates trained at the target (0: none)")


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
    dataset: DataSpec = DataSpec()
    candidates: list[CandidateConfig]
    probe: ProbeSpec = ProbeSpec()
    ladder: Ladder = Ladder()
    ntk: NtkSpec = NtkSpec()
    spectral: SpectralSpec = SpectralSpec()
    adaptive: AdaptiveConfig = AdaptiveConfig()
    target_size: int = Field(4096, ge=1)
    selector: str = "Lens"
    intervals: IntervalSpec = IntervalSpec()
    rank_on: Literal["bits_per_byte", "loss_per_token"] = "bits_per_byte"
    tracking: TrackingConfig = TrackingConfig()
    registry: RegistryConfig = RegistryConfig()
    # the YAML key is ``validate`` (a pydantic method's name, hence the field's own name)
    validation: ValidateConfig = Field(ValidateConfig(), alias="validate")
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
        """The selector exists, the ladder is long enough for it and an adaptive cap fits the
        ladder (deployment runs, which skip the CLI, get the same errors before any probe)."""
        from lens_model.selectors import SELECTORS
        from tasks.probing.adaptive import adaptive_name, adaptive_settings

        check_selector(self.selector, "selector")
        sizes, needed = self.ladder.sizes(), SELECTORS.get(self.selector).min_ladder_sizes
        if len(sizes) < needed:
            raise ValueError(
                f"selector {self.selector} needs at least {needed} ladder sizes to extrapolate "
                f"a curve, the ladder has {sizes}: lower ladder.first_size (e.g. to "
                f"{self.ladder.budget // 2}) or choose SubTuning"
            )
        if self.adaptive.enabled and adaptive_name(self.selector) == "Lens":
            fraction = self.adaptive.ladder_fraction(self.target_size, sizes)
            adaptive_settings(sizes, self.ladder.budget, fraction)
        if SELECTORS.get(self.selector).__name__ == "NLPMetrics" and not self.spectral.enabled:
            raise ValueError(
                "selector NLPMetrics ranks by the weight-spectrum metrics: set "
                "spectral.enabled: true (or choose another selector)"
            )

    def trust(self) -> dict[str, bool]:
        """Candidate name -> whether its own model code may run (off unless opted in)."""
        return {c.name: c.trust_remote_code for c in self.candidates}

    def resolved_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False)

    def config_hash(self) -> str:
        blob = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def check_selector(name: str, where: str) -> None:
    """The one check of a selector name: unknown names raise ``ConfigError`` naming ``where``
    with a "did you mean" (the config, ``lensllm benchmark --methods`` and the benchmark flow
    use it)."""
    from lens_model.selectors import SELECTORS

    try:
        SELECTORS.get(name)
    except KeyError as err:
        raise ConfigError(f"{where}: {err.args[0]}") from None


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
