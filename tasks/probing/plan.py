"""The probes of one selection: every candidate on the ladder, or those an adaptive ``Lens``
asks for, each a cached :func:`tasks.probing.probe.probe_task` call built in one place
(:meth:`ProbePlan.submit`), so the full ladder, the adaptive path and the registry fine-tune
share cache entries."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.probing.adaptive import adaptive_name, run_adaptive_excluding_diverged
from tasks.probing.probe import probe_run_name, probe_task
from tasks.records.schema import PreparedData, ProbeResult, ProbeSpec
from tasks.runtime.cache import cached
from tasks.runtime.progress import Progress
from tasks.training.finetune import progress_logger
from tasks.training.precision import resolved_spec

# Arguments that change how fast a probe runs, not what it computes.
NOT_IN_CACHE_KEY = ("threads", "progress")


@dataclass(frozen=True)
class ProbePlan:
    """Everything a probe of this selection needs besides the candidate and the size.

    ``spec.precision`` is resolved (fp32 or bf16) before the first probe, so the cache key of
    every probe names the precision that computed it and one plan never mixes precisions.
    """

    data: PreparedData
    models: dict[str, str]  # candidate name -> model folder
    trust: dict[str, bool]  # candidate name -> trust_remote_code
    spec: ProbeSpec
    threads: int
    cache_dir: Path
    storage: Any  # Prefect result storage (tasks.runtime.result_storage)
    progress: Progress | None = None  # shows the selection's progress as probes finish

    def __post_init__(self) -> None:
        object.__setattr__(self, "spec", resolved_spec(self.spec))  # frozen: set once, here

    @property
    def budget(self) -> int:
        return self.data.sizes[-1]

    def weights_dir(self, name: str, size: int) -> str:
        """Where the probe of ``name`` at ``size`` saves its merged weights (deterministic)."""
        blob = json.dumps(
            [name, self.data.fingerprint, self.spec.model_dump(mode="json"), size], sort_keys=True
        )
        key = hashlib.sha256(blob.encode()).hexdigest()[:12]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return str((self.cache_dir / "finetuned" / f"{safe}-{key}").resolve())

    def submit(self, name: str, size: int, *, save: bool | None = None, verb: str = "probe"):
        """Submit the probe of ``name`` on the first ``size`` training examples. The budget
        probe (or ``save=True``) saves its weights for the registry; a cached probe whose
        weights folder is gone runs again. ``verb`` starts its task-run name (``train`` for
        the training at the target); the name is not part of the cache key."""
        save = size == self.budget if save is None else save
        save_dir = self.weights_dir(name, size) if save else None
        refresh = bool(save_dir) and not Path(save_dir).is_dir()
        task = cached(probe_task, self.storage, exclude=NOT_IN_CACHE_KEY, refresh=refresh)
        task = task.with_options(task_run_name=functools.partial(probe_run_name, verb))
        return task.submit(
            self.models[name],
            self.data.for_probe(size),
            self.spec,
            candidate=name,
            threads=self.threads,
            save_dir=save_dir,
            replace_save_dir=True,
            trust_remote_code=self.trust[name],
        )

    def result(self, future, key: tuple[str, int] | None = None) -> ProbeResult:
        """A submitted probe's result, logged in one line (and counted by ``progress``)."""
        if self.progress is not None and key is not None:
            self.progress.running(key)
        res: ProbeResult = future.result()
        if self.progress is not None and key is not None:
            state = getattr(future, "state", None)
            cached = state is not None and state.name == "Cached"
            self.progress.finished(key, res.wall_time_s, cached)
        progress_logger().info(
            "probe %-28s size %5d: %.4f bits/byte, %.4f nats/token, %d steps, %.1f s",
            res.candidate,
            res.size,
            res.test_bits_per_byte,
            res.test_loss,
            res.steps,
            res.wall_time_s,
        )
        return res

    def ladder(self) -> dict[str, list[ProbeResult]]:
        """Every candidate at every ladder size and zero-shot, submitted together."""
        futures = {
            (name, size): self.submit(name, size)
            for name in self.models
            for size in [0, *self.data.sizes]
        }
        out: dict[str, list[ProbeResult]] = {name: [] for name in self.models}
        for (name, size), future in futures.items():
            out[name].append(self.result(future, (name, size)))
        return out

    def adaptive(
        self,
        n_params: dict[str, int],
        *,
        rank_on: str,
        target_size: int,
        fraction,
        intervals,
        selector: str = "Lens",
    ):
        """``Lens`` (or ``SuccessiveHalving`` when that is the ``selector``) decides which
        probes run, within ``fraction`` of the full ladder's compute; a candidate whose probe
        diverges is excluded and the selector starts again on the others."""
        names = list(self.models)
        probes, outcome = run_adaptive_excluding_diverged(
            names,
            [n_params[n] for n in names],
            self.data.sizes,
            lambda name, size: self._adaptive_probe(name, size, n_params[name]),
            rank_on=rank_on,
            budget=self.budget,
            target_size=target_size,
            fraction=fraction,
            intervals=intervals,
            selector=selector,
        )
        logger = progress_logger()
        for name, reason in outcome.run.excluded.items():
            logger.warning("adaptive: %s excluded: %s", name, reason)
        logger.info(
            "adaptive: %s %s ran %d probes; dropped %s",
            adaptive_name(selector),
            outcome.run.settings,
            len(outcome.run.probes),
            outcome.run.dropped or "none",
        )
        return probes, outcome

    def _adaptive_probe(self, name: str, size: int, n_params: int) -> ProbeResult:
        if self.progress is not None:
            self.progress.add((name, size), float(n_params * size))
        return self.result(self.submit(name, size), (name, size))

    def saved_weights(self, name: str, probes: list[ProbeResult]) -> ProbeResult:
        """The probe of ``name`` whose merged weights are on disk: its largest probe, or (an
        adaptive run that stopped below the budget saved none) that probe once more with
        its weights saved (a cached task)."""
        largest = max(probes, key=lambda p: p.size)
        if largest.save_dir:
            return largest
        if largest.size == 0:
            raise ValueError(f"{name} was never fine-tuned (only zero-shot): nothing to register")
        progress_logger().info("fine-tuning %s on %d examples for the registry", name, largest.size)
        return self.result(self.submit(name, largest.size, save=True))
