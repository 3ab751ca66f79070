"""Typed records: what flows between the steps of a selection.

Each step takes and returns these frozen pydantic models (they pickle into Prefect's result
store and dump to JSON for MLflow), and settings travel as one object:

* :class:`DataSpec` and :class:`Ladder` say which data and which subset sizes (the config's
  ``dataset`` and ``ladder`` sections are these classes);
* :class:`ProbeSpec` is the probe recipe (the config's ``probe`` section), peft-style, with
  :meth:`ProbeSpec.lora_config`;
* :class:`PreparedData` is the split and shuffled data set, :class:`ProbeData` the slice one
  probe trains and tests on;
* :class:`ProbeResult` is one measured probe, :class:`NtkResult` a candidate's kernel spectrum,
  :class:`SpectralResult` the spectra of its weight matrices;
* :class:`CandidateResult` and :class:`SelectionResult` are the ranking with predictions;
  :class:`Budget` the compute accounting, :class:`AdaptiveRun` what an adaptive run did.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Example = dict[str, str]
#: The probe-result field each ``rank_on`` choice ranks on.
RANK_KEYS = {"bits_per_byte": "test_bits_per_byte", "loss_per_token": "test_loss"}


def fingerprint(examples: list[Example]) -> str:
    """Short, order-sensitive sha256 hex digest of the examples' content (stable across runs)."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps(example, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()[:16]


class Record(BaseModel):
    """Frozen, strict: unknown fields are errors that name the field."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------------------------
# What to probe


class DataSpec(Record):
    """The task data set and its fixed validation and test splits."""

    source: str = Field(
        "wordnet",
        description="wordnet | wordnet-examples | manpages | freedict | local file | hub id",
    )
    path: str | None = None
    prompt_field: str | None = None
    target_field: str | None = None
    template: str | None = None
    group_field: str | None = None
    val_size: int = Field(64, ge=1)
    test_size: int = Field(64, ge=1)
    max_examples: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0)
    on_bad_rows: Literal["error", "skip"] = Field(
        "error",
        description="a record of a file that cannot be read (not JSON, not an object, a ragged "
        "CSV line, a list where text belongs): error names it; skip drops it and reports the count",
    )


class Ladder(Record):
    """Probe sizes ``first_size * 2**i`` up to ``budget`` (plus zero-shot, which is free)."""

    first_size: int = Field(32, ge=1)
    budget: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _doubling(self) -> Ladder:
        if self.budget < self.first_size:
            raise ValueError(
                f"ladder.budget ({self.budget}) is smaller than ladder.first_size "
                f"({self.first_size}); raise the budget or lower the first size"
            )
        ratio, remainder = divmod(self.budget, self.first_size)
        if remainder or ratio & (ratio - 1):
            below = self.first_size * 2 ** (ratio.bit_length() - 1)
            raise ValueError(
                f"ladder.budget ({self.budget}) must be ladder.first_size ({self.first_size}) "
                f"times a power of two (the ladder doubles): use {below} or {below * 2}, or "
                "change first_size"
            )
        return self

    def sizes(self) -> list[int]:
        """The positive probe sizes, increasing."""
        ratio = self.budget // self.first_size
        return [self.first_size * 2**i for i in range(ratio.bit_length())]


class ProbeSpec(Record):
    """The probe recipe: how a candidate is fine-tuned on a subset and measured.

    Training is AdamW at a constant ``learning_rate`` (gradient norm clipped at 1) for
    ``epochs`` passes over the subset in seeded shuffled batches, or exactly ``max_steps`` steps
    when given; the validation loss is measured before training and every ``eval_every`` steps
    (default: once per epoch), training
    stops after ``early_stopping_patience`` evaluations without improvement and the best
    weights are restored.
    """

    method: Literal["lora", "full"] = "lora"
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    learning_rate: float = Field(2e-3, gt=0)
    epochs: int = Field(2, ge=1)
    max_steps: int | None = Field(None, ge=1)
    eval_every: int | None = Field(None, ge=1, description="steps between validations (epoch)")
    early_stopping_patience: int | None = Field(2, ge=1)
    batch_size: int = Field(8, ge=1)
    max_seq_len: int = Field(48, ge=8)
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="number format (tasks.training.precision): auto is bf16 where the device "
        "computes it fast (CUDA with bf16, a CPU with AMX or AVX512-BF16), else fp32",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu") and not v.startswith("cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {v!r}")
        return v

    @property
    def eval_batch_size(self) -> int:
        return max(self.batch_size, 16)

    def adapter_only(self) -> ProbeSpec:
        """This recipe with the training settings at their defaults and no dropout: what the
        NTK features depend on (model, adapter, sequence length, seed, device), so a new
        learning rate does not recompute them. The kernel is always computed in fp32 (its
        eigenvalues span orders of magnitude that bf16's 8-bit mantissa would blur)."""
        training = ("learning_rate", "epochs", "max_steps", "eval_every")
        training += ("early_stopping_patience", "batch_size")
        defaults = {k: type(self).model_fields[k].default for k in training}
        # no dropout in a kernel
        return self.model_copy(update={**defaults, "lora_dropout": 0.0, "precision": "fp32"})

    def lora_config(self) -> Any:
        """The peft ``LoraConfig`` of this recipe (``method == "lora"``)."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=list(self.target_modules),
            task_type="CAUSAL_LM",
        )


class IntervalSpec(Record):
    """The uncertainty every prediction is reported with (``lens_model.calibration``)."""

    level: float = Field(0.9, gt=0.0, lt=1.0, description="nominal level of every interval")
    method: Literal["calibrated", "heuristic"] = Field(
        "calibrated",
        description="calibrated: learned from a backtest of the selection's own probes; "
        "heuristic: the predictor's own least-squares / delta-method interval",
    )
    # On by default since it was fitted on FLAN and the live tables: leave-one-table-out, its
    # 90 % intervals held every live table's truths, where the backtest alone states none or a
    # 17x one (docs/replay.md, "The cross-task error model").
    prior: str = Field(
        "default",
        description="the cross-task error model calibrated intervals start from: 'none' (the "
        "selection's own backtest alone), 'default' (the shipped configs/error_prior.json) "
        "or the path of a file written by `lensllm calibration fit`",
    )


class NtkSpec(Record):
    """The NTK features of each candidate (the F term of the LensLLM law)."""

    enabled: bool = True
    n_examples: int = Field(32, ge=2, description="probe-set size for the kernel")
    projection_dim: int | None = Field(None, ge=1, description="needed for method: full")
    rank_with_f: bool = Field(
        True, description="Lens ranks with the LensLLM law and F (else F is only reported)"
    )


# The weight-spectrum names and default of lens_model.weight_spectrum, spelt here so that the
# records (which every probe imports) do not put lens_model into the probe's cache key
# (tasks.runtime.cache); tests/pipeline/test_cache.py checks that they agree.
SPECTRAL_METRICS = ("alpha_weighted", "alpha", "log_spectral_norm")
SPECTRAL_RANKING_METRIC = "alpha_weighted"
SPECTRAL_MIN_TAIL = 10


class SpectralSpec(Record):
    """The weight-spectrum (NLPmetrics) metrics of each candidate (``tasks.weight_metrics``)."""

    enabled: bool = True
    min_tail: int = Field(
        SPECTRAL_MIN_TAIL, ge=2, description="fewest eigenvalues a fitted power-law tail holds"
    )


# --------------------------------------------------------------------------------------------
# Data


class ProbeData(Record):
    """What one probe trains and tests on: a training subset and the fixed val/test splits."""

    source: str
    train: list[Example]
    val: list[Example]
    test: list[Example]
    train_fingerprint: str | None = None
    test_fingerprint: str | None = None

    @property
    def size(self) -> int:
        return len(self.train)


class PreparedData(Record):
    """A task data set split by group and shuffled once; every probe subset is a prefix of
    ``train`` (so subsets are nested and shared by all candidates)."""

    source: str
    train: list[Example] = Field(
        description="the shuffled train prefix: max(budget, min(target size, train split))"
    )
    val: list[Example]
    test: list[Example]
    sizes: list[int]
    fingerprint: str = Field(description="of train, val and test together")
    subset_fingerprints: dict[int, str]
    val_fingerprint: str
    test_fingerprint: str
    n_available: int = Field(description="examples loaded (after max_examples)")
    n_train_available: int = Field(description="size of the train split")
    target_size: int | None = Field(None, description="the full data size to predict")
    n_distinct: int | None = Field(None, description="distinct (prompt, target) pairs loaded")
    n_groups: int | None = Field(None, description="groups loaded (a group never spans splits)")
    skipped_rows: str = Field(
        "0", description="bad rows dropped by on_bad_rows: skip: the count and first positions"
    )

    @property
    def target_examples(self) -> int:
        """Examples a training at the target gets: the target size, or the whole train split
        when that is smaller."""
        return min(self.target_size or self.sizes[-1], len(self.train))

    @property
    def dataset_name(self) -> str:
        return self.source.replace("/", "_")

    def for_probe(self, size: int) -> ProbeData:
        """The first ``size`` training examples (0 = zero-shot) with the val and test splits;
        ``size`` is a ladder size or any size up to the prepared pool (``len(train)``)."""
        if not 0 <= size <= len(self.train):
            raise ValueError(
                f"size {size} is outside the prepared training pool (0..{len(self.train)}; "
                f"ladder {self.sizes})"
            )
        subset = self.train[:size]
        return ProbeData(
            source=self.source,
            train=subset,
            val=self.val,
            test=self.test,
            train_fingerprint=self.subset_fingerprints.get(size)
            or (fingerprint(subset) if size else None),
            test_fingerprint=self.test_fingerprint,
        )


# --------------------------------------------------------------------------------------------
# Measurements


class ProbeResult(Record):
    """One candidate fine-tuned on one subset and measured on the test split.

    Losses: ``test_loss`` is the mean NLL per target token (nats), ``test_loss_per_byte`` the
    summed NLL per UTF-8 byte of target text, ``test_bits_per_byte`` that over ln 2 (comparable
    across tokenizers). ``flops`` = 6 x ``forward_params`` x ``train_tokens``
    (``tasks.training.finetune.FLOPS_FORMULA``). A diverged probe keeps its (possibly NaN) losses
    and
    ``diverged=True``.
    """

    candidate: str
    size: int = Field(ge=0, description="training examples (0 = zero-shot)")
    train_fingerprint: str | None = None
    test_fingerprint: str | None = None
    test_loss: float
    test_loss_per_byte: float
    test_bits_per_byte: float
    test_tokens: int
    test_bytes: int
    val_loss: float | None = None
    zero_shot_val_loss: float | None = None
    train_loss_last: float | None = None
    steps: int = 0
    best_step: int = 0
    stopped_early: bool = False
    diverged: bool = False
    train_tokens: int = 0
    forward_params: int
    trainable_params: int = 0
    flops: float = 0.0
    method: str
    learning_rate: float
    n_train: int
    n_val: int
    n_test: int
    n_truncated_test: int = 0
    seed: int = 0
    device: str
    dtype: str
    precision: Literal["fp32", "bf16"] = "fp32"
    threads: int | None = None
    worker: str = ""
    history: list[dict[str, float | int | None]] = []
    test_example_nll: list[float] = Field(
        [], description="each test example's summed target NLL (nats), in test-split order"
    )
    test_example_bytes: list[int] = []
    test_example_tokens: list[int] = []
    save_dir: str | None = None
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    wall_time_s: float = 0.0

    def value(self, rank_on: str) -> float:
        """The measured loss ``rank_on`` ranks on (``bits_per_byte`` or ``loss_per_token``)."""
        return float(getattr(self, RANK_KEYS[rank_on]))

    def measurement(self, rank_on: str) -> Measurement:
        """The per-example test losses this probe measured, for a paired comparison."""
        if not self.test_example_nll:
            raise ValueError(f"the probe of {self.candidate} kept no per-example test losses")
        return Measurement.of(
            rank_on,
            self.test_fingerprint or "",
            self.test_example_nll,
            self.test_example_bytes,
            self.test_example_tokens,
        )

    def usable(self, rank_on: str) -> bool:
        """Finite, positive and not diverged: a point a law may be fitted to."""
        value = self.value(rank_on)
        return not self.diverged and math.isfinite(value) and value > 0

    @property
    def training_steps(self) -> float:
        """Steps to early stopping (the NTK term's training time t)."""
        return float(self.best_step or self.steps)

    def metrics(self) -> dict[str, float]:
        """Every numeric field (for MLflow, at step = subset size)."""
        skip = {"size", "seed"}
        return {
            k: float(v)
            for k, v in self.model_dump().items()
            if k not in skip and isinstance(v, int | float) and not isinstance(v, bool)
        } | {"diverged": float(self.diverged), "stopped_early": float(self.stopped_early)}


class Measurement(Record):
    """A model's loss on a test split, example by example: ``loss = scale * sum(nll) /
    sum(units)`` with units the target bytes (``bits_per_byte``, scale 1/ln 2) or target
    tokens (``loss_per_token``, scale 1). Two measurements on the same split (the same
    ``test_fingerprint``) are paired example by example."""

    rank_on: str
    test_fingerprint: str
    example_nll: list[float]
    example_units: list[int]
    scale: float

    @classmethod
    def of(cls, rank_on: str, fingerprint_: str, nll, n_bytes, n_tokens) -> Measurement:
        units = n_bytes if rank_on == "bits_per_byte" else n_tokens
        scale = 1 / math.log(2) if rank_on == "bits_per_byte" else 1.0
        return cls(
            rank_on=rank_on,
            test_fingerprint=fingerprint_,
            example_nll=list(nll),
            example_units=list(units),
            scale=scale,
        )

    @property
    def loss(self) -> float:
        return self.scale * sum(self.example_nll) / sum(self.example_units)


class NtkResult(Record):
    """A candidate's empirical NTK on the probe set (``lens_model.ntk``): its spectrum, the
    alignment of the initial residual with the eigenvectors, and what it cost
    (``tasks.ntk_features.f_term`` gives F from it)."""

    n: int
    eigenvalues: list[float]
    alignment: list[float]
    residual_norm_sq: float
    effective_rank: float
    participation_ratio: float
    trace: float
    seconds: float
    peak_rss_mb: float
    device: str
    projection_dim: int | None = None


class SpectralLayer(Record):
    """One weight matrix's metrics (``lens_model.weight_spectrum.LayerSpectrum``)."""

    name: str
    rows: int
    cols: int
    n_eigenvalues: int
    alpha: float
    xmin: float
    ks_distance: float
    n_tail: int
    lambda_max: float
    log_spectral_norm: float
    alpha_weighted: float


class SpectralResult(Record):
    """A candidate's weight-spectrum metrics: the means over its matrices (lower = better for
    each; ``alpha_weighted`` is the one the literature ranks with), every matrix's, which
    weights they were computed from and what it cost. A selector reads one by name:
    ``result.metric("alpha_weighted")``."""

    weights_sha256: str = Field(description="sha256 over the safetensors files' names and bytes")
    matrices: str = Field(description="which weight matrices, in words")
    alpha_weighted: float
    alpha: float
    log_spectral_norm: float
    layers: list[SpectralLayer]
    seconds: float

    def metric(self, name: str) -> float:
        """The model-level metric ``name`` (one of ``SPECTRAL_METRICS``)."""
        if name not in SPECTRAL_METRICS:
            raise KeyError(
                f"unknown weight-spectrum metric {name!r}: choose one of "
                f"{', '.join(SPECTRAL_METRICS)} ({SPECTRAL_RANKING_METRIC} is the one the "
                "literature ranks with)"
            )
        return float(getattr(self, name))

    def summary(self) -> dict[str, float]:
        """Every model-level metric by name."""
        return {name: self.metric(name) for name in SPECTRAL_METRICS}


# --------------------------------------------------------------------------------------------
# Decisions


class LawFit(Record):
    """One law fitted to a candidate's measured curve, evaluated at the target."""

    predicted_loss: float
    interval_low: float
    interval_high: float
    rmse_log: float
    converged: bool
    params: dict[str, float]


class CandidateResult(Record):
    """A candidate's place in the selection."""

    name: str
    rank: int
    predicted_loss: float
    interval: tuple[float, float]
    score: float
    dropped: str | None = None
    excluded: str | None = None
    laws: dict[str, LawFit] = {}
    fit_converged: bool | None = None
    fit_warnings: list[str] = []
    f_term: float | None = None
    p_best: float | None = Field(None, description="probability of being best at the target")

    @property
    def note(self) -> str:
        """Why a candidate was dropped or excluded, or its fit warnings."""
        return self.dropped or self.excluded or "; ".join(self.fit_warnings)


class SelectionResult(Record):
    """The ranking: every candidate's predicted target loss, best first."""

    selector: str
    predictor: str | None = Field(None, description="how Lens predicted: lens_law/local_slope")
    rank_on: str
    target_size: int
    sizes: list[int]
    selected: str
    ranking: list[str]
    candidates: dict[str, CandidateResult]
    cost: float = Field(description="probe compute / fine-tuning every candidate on the target")
    probes_read: list[tuple[str, int]]
    level: float = Field(0.9, description="nominal level of every interval")
    interval_method: str = "heuristic"
    interval_basis: str = Field("", description="what the intervals rest on, in words")
    prob_better: dict[str, dict[str, float]] = Field(
        {}, description="prob_better[a][b]: P(a reaches a lower loss than b at the target)"
    )

    @property
    def winner(self) -> CandidateResult:
        return self.candidates[self.selected]

    def ranking_rows(self) -> list[dict]:
        """The ranking as table rows (MLflow table, Prefect artifact, CLI)."""
        rows = []
        for name in self.ranking:
            c = self.candidates[name]
            rows.append(
                {
                    "rank": c.rank,
                    "candidate": name,
                    "predicted_loss": round(c.predicted_loss, 5),
                    "interval_low": round(c.interval[0], 5),
                    "interval_high": round(c.interval[1], 5),
                    "level": self.level,
                    "p_best": None if c.p_best is None else round(c.p_best, 4),
                    "note": c.note,
                }
            )
        return rows


class AdaptiveRun(Record):
    """What ``Lens`` did in an adaptive run: its settings, the probes it chose, whom it dropped
    and whom a diverged probe excluded."""

    settings: dict[str, float]
    probes: list[tuple[str, int]]
    dropped: dict[str, str]
    excluded: dict[str, str] = {}


class Budget(Record):
    """Probe compute in parameter x example units (the replay Cost's numerator), plus FLOPs."""

    compute_spent: float
    compute_full_ladder: float
    compute_full_finetune_all: float
    flops_spent: float
    n_probes: int

    @property
    def ladder_share(self) -> float:
        return self.compute_spent / self.compute_full_ladder

    @property
    def full_finetune_share(self) -> float:
        return self.compute_spent / self.compute_full_finetune_all


NO_INTERVAL = "no interval: too few probes to calibrate one"


def count_held(held: Iterable[bool | None]) -> tuple[int, int]:
    """``(held, stated)``: how many checks' intervals held the measured loss, and how many
    stated an interval at all (``held`` is None where none was stated)."""
    values = list(held)
    return sum(v is True for v in values), sum(v is not None for v in values)


class TargetCheck(Record):
    """A candidate trained at the target and measured: the prediction checked against it."""

    candidate: str
    rank: int
    target_size: int
    trained_examples: int = Field(description="the target, or the whole train split if smaller")
    rank_on: str
    measured_loss: float
    predicted_loss: float
    interval_low: float
    interval_high: float
    level: float

    @property
    def log_error(self) -> float:
        """``ln(measured / predicted)``: positive when the prediction was too optimistic."""
        return math.log(self.measured_loss / self.predicted_loss)

    @property
    def held(self) -> bool | None:
        """Whether the interval holds the measured loss; None where no interval was stated
        (too few probes to calibrate one)."""
        if not (math.isfinite(self.interval_low) and math.isfinite(self.interval_high)):
            return None
        return self.interval_low <= self.measured_loss <= self.interval_high

    @property
    def verdict(self) -> str:
        """The check in words: the interval held, did not hold, or no interval was stated."""
        return {True: "the interval held", False: "the interval did not hold"}.get(
            self.held, "no interval was stated"
        )

    def interval_text(self) -> str:
        if self.held is None:
            return "(no interval)"
        return f"[{self.interval_low:.4g}, {self.interval_high:.4g}] ({self.level:.0%})"

    def summary(self) -> str:
        return (
            f"{self.candidate} at {self.trained_examples} examples: predicted "
            f"{self.predicted_loss:.4f} {self.interval_text()}, measured "
            f"{self.measured_loss:.4f} {self.rank_on}; log error {self.log_error:+.3f}, "
            f"{self.verdict}"
        )


class CheckedSelection(Record):
    """One selection or audit in the live calibration record, with every candidate it trained
    at the target and checked (an audit checks them all)."""

    kind: Literal["selection", "audit"]
    source: str = Field(description="the MLflow run id, or the audit.json file")
    task: str
    selector: str
    selected: str
    checks: list[TargetCheck]
    selection_run: str = Field("", description="the MLflow run of the selection, where known")
    winner_only: bool = Field(
        False, description="an older record that kept the winner's check only"
    )

    @classmethod
    def from_audit(cls, report: dict, source: str) -> CheckedSelection:
        """An ``audit.json`` report (``flows/audit.py``)."""
        fields = set(TargetCheck.model_fields)
        return cls(
            kind="audit",
            source=source,
            task=report["task"],
            selector=report["selector"],
            selected=report["selected"],
            checks=[TargetCheck(**{k: v for k, v in c.items() if k in fields})
                    for c in report["checks"]],
            selection_run=report.get("selection_run", ""),
        )  # fmt: skip


class GateInputs(Record):
    """What the promotion gate needs to compare on shared data: the current test split, how
    to evaluate on it, the challenger's measurement there, and the rule's settings."""

    test: list[Example]
    test_fingerprint: str
    spec: ProbeSpec = Field(description="the evaluation settings (device, lengths, batch)")
    rank_on: str
    measurement: Measurement
    margin: float = Field(0.0, ge=0.0)
    min_confidence: float = Field(0.9, ge=0.0, le=1.0)


class RegistrationRequest(Record):
    """What to register: a saved, merged transformers model folder, what selected it, and
    where to record it. With :class:`GateInputs` it is all the register flow needs (both are
    JSON-serialisable deployment parameters; an unknown loss or interval is None)."""

    model_dir: str
    registered_name: str = Field(min_length=1, description="one registered model per task")
    task_key: str = Field(min_length=1)
    selection_key: str = Field(min_length=1)
    predicted_loss: float | None = None
    interval: tuple[float, float] | None = None
    selector: str = "manual"
    data_fingerprint: str | None = Field(
        None,
        description="of the data the model was trained on; with the weights' hash it finds "
        "a version that already holds this model (None: never treated as a duplicate)",
    )
    tags: dict[str, str] = Field({}, description="provenance and check tags of the version")
    finetune_size: int | None = Field(None, description="examples the model was trained on")
    tracking_uri: str
    experiment: str = "lensllm-register"
    parent_run_id: str | None = Field(None, description="log in this run (a selection's)")
    max_new_tokens: int = Field(32, ge=1)


class Registration(Record):
    """What the registry did with a model: the version that holds it, and the gate's decision
    (or, for a model some version already holds, that version and no gate)."""

    version: str | None = None
    aliases: list[str] = []
    promoted: bool = False
    reason: str = ""
    created: bool = False
    already_registered: bool = Field(
        False, description="another selection registered the same weights and data: no gate"
    )
    run_id: str | None = None
    challenger_measured_loss: float | None = None
    champion_version: str | None = None
    champion_measured_loss: float | None = None
    p_better: float | None = None
    weights_sha256: str | None = None
    finetune_size: int | None = Field(None, description="examples the registered model saw")
    model_dir: str | None = Field(None, description="the folder that was registered")

    @property
    def verdict(self) -> str:
        """The gate's outcome in words."""
        if self.already_registered:
            return "not run"
        return "promoted to champion" if self.promoted else "not promoted"


class SelectionSummary(Record):
    """What a selection run returns (and ``lensllm select`` prints)."""

    selection_key: str
    run_id: str
    resumed: bool
    tracking_uri: str
    result: SelectionResult
    budget: Budget
    adaptive: AdaptiveRun | None = None
    registration: Registration | None = None
    plot: str
    checks: list[TargetCheck] = Field([], description="the top candidates trained at the target")
    recorded_in: str | None = Field(
        None, description="the finished run that already held this selection (nothing logged)"
    )
    timings: dict[str, float] = Field(
        {}, description="wall seconds per step of this process's run (cache hits are fast)"
    )
    spectral: dict[str, SpectralResult] = Field(
        {}, description="each candidate's weight-spectrum metrics (spectral.enabled)"
    )

    def time_split(self) -> str:
        """``step 12 s (3 %), ...`` in the order the steps ran."""
        total = sum(self.timings.values()) or 1.0
        parts = [f"{step} {_duration(s)} ({s / total:.0%})" for step, s in self.timings.items()]
        return f"{_duration(total)}: " + ", ".join(parts)

    @property
    def selected(self) -> str:
        return self.result.selected


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{seconds:.1f} s"
