"""Selection flow: subsample -> probe -> fit -> select -> MLflow -> registry."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.config import SelectionConfig, load_config
from flows.register import register_flow
from flows.runners import build_task_runner, probe_threads
from lens_model.ntk import NonFiniteKernelError, f_term_from_spectrum
from tasks import tracking
from tasks.data import prepare_data_task
from tasks.fit import RANK_KEYS, fit_and_select_task, plot_selection, plot_spectra
from tasks.live_probes import budget_accounting, run_adaptive_excluding_diverged
from tasks.locks import held, lock_path
from tasks.models import describe_candidate, resolve_candidate_task
from tasks.ntk import ntk_task
from tasks.probe import is_out_of_memory, probe_task
from tasks.result_storage import result_storage


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _probe_settings(cfg: SelectionConfig, threads: int) -> dict:
    p = cfg.probe
    return {
        "method": p.method,
        "lora_r": p.lora_r,
        "lora_alpha": p.lora_alpha,
        "lora_dropout": p.lora_dropout,
        "target_modules": list(p.target_modules),
        "learning_rate": p.learning_rate,
        "max_steps": p.max_steps,
        "epochs": p.epochs,
        "batch_size": p.batch_size,
        "max_seq_len": p.max_seq_len,
        "early_stopping_patience": p.early_stopping_patience,
        "seed": p.seed,
        "device": p.device,
        "threads": threads,
    }


def _finetuned_dir(
    cfg: SelectionConfig, name: str, data_fp: str, settings: dict, size: int | None = None
) -> str:
    size = cfg.ladder.budget if size is None else size
    key = hashlib.sha256(
        json.dumps([name, data_fp, settings, size], sort_keys=True).encode()
    ).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return str(Path(cfg.cache_dir, "finetuned", f"{safe}-{key}").resolve())


@flow(name="select-model", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def select_flow(config_path: str | None = None, overrides: list[str] | None = None) -> dict:
    """Run one selection from a YAML config (``overrides``: ``key.sub=value`` strings)."""
    cfg = load_config(config_path, overrides)
    return run_selection(cfg)


def run_selection(cfg: SelectionConfig) -> dict:
    logger = get_run_logger()
    cache = Path(cfg.cache_dir).resolve()
    # Config > the environment (a worker of the server stack sets it) > the local store.
    tracking_uri = (
        cfg.tracking.uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or tracking.default_tracking_uri(str(cache))
    )
    # Validate what can fail before spending compute: the data ladder and every candidate.
    data = prepare_data_task(**cfg.data_kwargs())
    models = {
        c.name: resolve_candidate_task(
            c.name, cache_dir=str(cache / "models"), trust_remote_code=c.trust_remote_code
        )
        for c in cfg.candidates
    }
    n_params = {name: int(describe_candidate(path)["n_params"]) for name, path in models.items()}
    logger.info(
        "data %s (fingerprint %s); candidates: %s",
        data["source"],
        data["fingerprint"],
        ", ".join(f"{n} ({p / 1e6:.1f}M)" for n, p in n_params.items()),
    )
    tracking.check_reachable(tracking_uri)  # before any compute is spent
    key = selection_key(cfg, data)
    # A second selection of the same config and data waits, then takes everything from cache.
    with held(lock_path(cache / "locks", "selection", key), f"selection {key}", logger):
        return _select(cfg, data, models, n_params, tracking_uri, cache, key)


def selection_key(cfg: SelectionConfig, data: dict) -> str:
    """What identifies a selection: the resolved config and the data's fingerprint."""
    return hashlib.sha256(f"{cfg.config_hash()}:{data['fingerprint']}".encode()).hexdigest()[:16]


def _select(cfg, data, models, n_params, tracking_uri: str, cache: Path, key: str) -> dict:
    threads = probe_threads(cfg.runner)
    settings = _probe_settings(cfg, threads)
    ntk = _run_ntk(cfg, data, models, settings, cache)
    adaptive = None
    if cfg.adaptive.enabled:
        probes, adaptive = _run_adaptive(cfg, data, models, n_params, settings, cache)
    else:
        probes = _run_probes(cfg, data, models, settings, cache)
    budget = budget_accounting(probes, n_params, data["sizes"], cfg.target_size)
    _attach_f_terms(ntk, probes, settings["learning_rate"])
    result = fit_and_select_task(
        probes,
        n_params,
        f_terms={name: feats["f_term"] for name, feats in ntk.items()} or None,
        rank_with_f=cfg.ntk.rank_with_f,
        target_size=cfg.target_size,
        budget=cfg.ladder.budget,
        selector=cfg.selector,
        rank_on=cfg.rank_on,
        seed=cfg.probe.seed,
        adaptive=adaptive,
    )
    out_dir = Path(tempfile.mkdtemp(prefix="lensllm-select-"))
    plot = plot_selection(result, probes, str(out_dir / "curves.png"))
    if ntk:
        plot_spectra(ntk, str(out_dir / "ntk_spectrum.png"))
    with _tracking_errors(tracking_uri):
        summary = _track(cfg, data, probes, result, n_params, tracking_uri, out_dir, ntk, key)
        try:
            summary.update(budget=budget, adaptive=adaptive)
            _track_budget(tracking_uri, summary["run_id"], budget, adaptive)
            summary["plot"] = _keep_plot(plot, cache, summary["run_id"])
            _register(cfg, data, models, probes, result, settings, cache, summary)
            tracking.end_run(tracking_uri, summary["run_id"])
        except Exception:
            _mark_failed(tracking_uri, summary["run_id"])
            raise
    _prefect_artifacts(result, summary)
    return summary


def _register(cfg, data, models, probes, result, settings, cache: Path, summary: dict) -> None:
    """Register the winner's fine-tuned weights and run the promotion gate (when enabled)."""
    if not cfg.registry.enabled:
        return
    selected = result["selected"]
    largest = max(probes[selected], key=lambda p: p["subset_size"])
    if not largest.get("save_dir"):
        # An adaptive run can stop the winner below the budget, where no weights were saved:
        # fine-tune it once more on its largest probed subset, saving the merged weights.
        largest = _finetune_for_registry(
            cfg, data, selected, models[selected], largest, settings, cache
        )
        summary["registry_finetune_size"] = largest["subset_size"]
    cand = result["candidates"][selected]
    summary["registry"] = register_flow(
        largest["save_dir"],
        registered_name=cfg.registry.model_name,
        task_key=cfg.name,
        selection_key=summary["selection_key"],
        predicted_loss=cand["predicted_loss"],
        interval=cand["interval"],
        selector=cfg.selector,
        tags=summary["tags"],
        tracking_uri=summary["tracking_uri"],
        experiment=cfg.tracking.experiment,
        margin=cfg.registry.margin,
        parent_run_id=summary["run_id"],
        lock_dir=str(cache / "locks"),
    )


@contextmanager
def _tracking_errors(tracking_uri: str) -> Iterator[None]:
    """An error while talking to a tracking server that is down becomes one clear
    ``TrackingUnavailableError`` (probes are cached: the same command later logs them)."""
    try:
        yield
    except Exception as err:
        unreachable = tracking.unreachable_error(tracking_uri)
        if unreachable is not None:
            raise unreachable from err
        raise


def _mark_failed(tracking_uri: str, run_id: str) -> None:
    """Best effort: the parent run of a failed selection ends FAILED (the next attempt of the
    same selection resumes it); a tracking server that is down cannot be told."""
    if tracking.unreachable_error(tracking_uri) is not None:
        return
    try:
        tracking.end_run(tracking_uri, run_id, "FAILED")
    except Exception as err:  # the original error matters more; say why this one failed
        get_run_logger().warning("could not mark MLflow run %s FAILED: %s", run_id, err)


def ntk_kwargs(cfg: SelectionConfig, settings: dict) -> dict:
    """Arguments of ``tasks.ntk.compute_ntk_features`` matching the probes' LoRA settings."""
    keys = (
        "method",
        "lora_r",
        "lora_alpha",
        "target_modules",
        "max_seq_len",
        "seed",
        "device",
        "threads",
    )
    return {**{k: settings[k] for k in keys}, "projection_dim": cfg.ntk.projection_dim}


def _run_ntk(cfg, data, models, settings, cache: Path) -> dict[str, dict]:
    """NTK spectrum per candidate on the first ``ntk.n_examples`` training examples (cached)."""
    if not cfg.ntk.enabled:
        return {}
    logger = get_run_logger()
    task = ntk_task.with_options(
        cache_policy=INPUTS + TASK_SOURCE,
        persist_result=True,
        result_storage=result_storage(cache),
    )
    examples = data["train"][: cfg.ntk.n_examples]
    out = {}
    for name, path in models.items():
        try:
            feats = task(
                path, examples, trust_remote_code=_trust(cfg, name), **ntk_kwargs(cfg, settings)
            )
        except Exception as err:
            if not (isinstance(err, NonFiniteKernelError) or is_out_of_memory(err)):
                raise
            # F is optional: the laws without it still rank every candidate.
            logger.warning(
                "NTK features of %s skipped (%s); the selection goes on without the F term%s",
                name,
                err,
                ": lower ntk.n_examples or probe.max_seq_len, or set ntk.projection_dim"
                if is_out_of_memory(err)
                else "",
            )
            continue
        logger.info(
            "NTK %-28s n=%d effective rank %.2f, ||r0||^2 %.3g, %.1f s",
            name,
            feats["n"],
            feats["effective_rank"],
            feats["residual_norm_sq"],
            feats["seconds"],
        )
        out[name] = dict(feats)
    return out


def _attach_f_terms(ntk: dict, probes: dict, eta: float) -> None:
    """F(eta, t) per candidate, with t the steps to early stopping of its largest probe."""
    for name, feats in ntk.items():
        largest = max(probes[name], key=lambda p: p["subset_size"])
        t = float(largest.get("best_step") or largest["steps"])
        feats.update(
            eta=eta,
            t=t,
            f_term=f_term_from_spectrum(
                feats["eigenvalues"], feats["alignment"], feats["residual_norm_sq"], eta, t
            ),
        )


def _probe_task(cache: Path):
    return probe_task.with_options(
        cache_policy=INPUTS + TASK_SOURCE,
        persist_result=True,
        result_storage=result_storage(cache),
    )


def _submit_probe(
    probe, cfg, data, name: str, path: str, size: int, settings: dict, save_dir: str | None = None
):
    """Submit one probe; the single place its arguments are built, so the full ladder, the
    adaptive path and the registry fine-tune share cache keys. The budget-sized probe (or one
    given ``save_dir``) saves its weights for the registry."""
    if save_dir is None and size == cfg.ladder.budget:
        save_dir = _finetuned_dir(cfg, name, data["fingerprint"], settings)
    task = probe
    if save_dir and not Path(save_dir).is_dir():
        task = probe.with_options(refresh_cache=True)  # the weights must exist
    return task.submit(
        path,
        data["train"][:size],
        data["val"],
        data["test"],
        save_dir=save_dir,
        replace_save_dir=True,
        trust_remote_code=_trust(cfg, name),
        **settings,
    )


def _finetune_for_registry(cfg, data, name, path, largest, settings, cache) -> dict:
    """The winner fine-tuned on ``largest``'s subset with its weights saved (cached task)."""
    size = largest["subset_size"]
    if size == 0:
        raise ValueError(f"{name} was never fine-tuned (only zero-shot): nothing to register")
    save_dir = _finetuned_dir(cfg, name, data["fingerprint"], settings, size)
    get_run_logger().info("fine-tuning %s on %d examples for the registry", name, size)
    res = _submit_probe(
        _probe_task(cache), cfg, data, name, path, size, settings, save_dir=save_dir
    ).result()
    return _annotate(res, data, name, size)


def _annotate(res: dict, data: dict, name: str, size: int) -> dict:
    """Probe result plus what tracking records about its data; logs one line."""
    res = dict(res)
    res.update(
        subset_size=size,
        candidate=name,
        subset_fingerprint=_subset_fingerprint(data, size),
        test_fingerprint=data["test_fingerprint"],
        test_size=len(data["test"]),
        dataset_name=str(data["source"]).replace("/", "_"),
        dataset_source=data["source"],
    )
    get_run_logger().info(
        "probe %-28s size %5d: %.4f bits/byte, %.4f nats/token, %d steps, %.1f s",
        name,
        size,
        res["test_bits_per_byte"],
        res["test_loss"],
        res["steps"],
        res["wall_time_s"],
    )
    return res


def _run_probes(cfg, data, models, settings, cache: Path) -> dict[str, list[dict]]:
    """Every candidate at every ladder size (0 = zero-shot); finished probes come from cache."""
    probe = _probe_task(cache)
    futures = {
        (name, size): _submit_probe(probe, cfg, data, name, path, size, settings)
        for name, path in models.items()
        for size in [0, *data["sizes"]]
    }
    out: dict[str, list[dict]] = {name: [] for name in models}
    for (name, size), fut in futures.items():
        out[name].append(_annotate(fut.result(), data, name, size))
    return out


def _run_adaptive(cfg, data, models, n_params, settings, cache: Path):
    """``Lens`` decides which probes run, within the adaptive compute cap (see AdaptiveConfig);
    a candidate whose probe diverges is excluded and Lens starts again on the others."""
    probe = _probe_task(cache)
    names = list(models)
    probes, adaptive, excluded = run_adaptive_excluding_diverged(
        names,
        [n_params[n] for n in names],
        data["sizes"],
        lambda name, size: _annotate(
            _submit_probe(probe, cfg, data, name, models[name], size, settings).result(),
            data,
            name,
            size,
        ),
        metric_key=RANK_KEYS[cfg.rank_on],
        budget=cfg.ladder.budget,
        target_size=cfg.target_size,
        fraction=cfg.adaptive.ladder_fraction(cfg.target_size, data["sizes"]),
    )
    logger = get_run_logger()
    for name, reason in excluded.items():
        logger.warning("adaptive: %s excluded: %s", name, reason)
    logger.info(
        "adaptive: Lens %s ran %d probes; dropped %s",
        adaptive["settings"],
        len(adaptive["probes"]),
        adaptive["dropped"] or "none",
    )
    return probes, adaptive


def _subset_fingerprint(data: dict, size: int) -> str | None:
    prints = data["subset_fingerprints"]  # int keys, or str keys after a JSON round trip
    return prints.get(size, prints.get(str(size)))


def _trust(cfg: SelectionConfig, name: str) -> bool:
    return next(c.trust_remote_code for c in cfg.candidates if c.name == name)


def _track(cfg, data, probes, result, n_params, tracking_uri, out_dir: Path, ntk, key) -> dict:
    selection_key = key
    tags = {
        "lensllm.git_commit": git_commit(),
        "lensllm.config_hash": cfg.config_hash(),
        "lensllm.data_fingerprint": data["fingerprint"],
        "lensllm.selection_key": selection_key,
        "lensllm.task": cfg.name,
    }
    run_id, resumed = tracking.open_selection_run(
        tracking_uri,
        cfg.tracking.experiment,
        f"select-{cfg.name}",
        tags,
        {
            "selector": cfg.selector,
            "rank_on": cfg.rank_on,
            "target_size": cfg.target_size,
            "ladder": ",".join(map(str, data["sizes"])),
            "dataset": data["source"],
            "candidates": ",".join(probes),
            "probe_method": cfg.probe.method,
        },
        cfg.resolved_yaml(),
    )
    for name, runs in probes.items():
        cand = result["candidates"][name]
        prediction = {
            "target_size": cfg.target_size,
            "predicted_loss": cand["predicted_loss"],
            "interval_low": cand["interval"][0],
            "interval_high": cand["interval"][1],
            "rank": result["ranking"].index(name) + 1,
            "dropped": cand.get("dropped"),
            "excluded": cand.get("excluded"),
            "fit_converged": cand.get("fit_converged"),
            "fit_warnings": cand.get("fit_warnings"),
            "laws": cand["laws"],
        }
        clean = [{k: v for k, v in p.items() if k not in ("history", "save_dir")} for p in runs]
        tracking.log_candidate(
            tracking_uri,
            run_id,
            name,
            clean,
            prediction,
            {"n_params": n_params[name], "model": name},
            tags={"lensllm.dropped_reason": cand["dropped"]} if cand.get("dropped") else None,
            extra_metrics=_ntk_metrics(ntk[name]) if name in ntk else None,
            extra_json={"ntk_spectrum.json": ntk[name]} if name in ntk else None,
        )
    ranking = [
        {
            "rank": i + 1,
            "candidate": name,
            "predicted_loss": round(result["candidates"][name]["predicted_loss"], 5),
            "interval_low": round(result["candidates"][name]["interval"][0], 5),
            "interval_high": round(result["candidates"][name]["interval"][1], 5),
            "note": result["candidates"][name].get("dropped")
            or result["candidates"][name].get("excluded")
            or "; ".join(result["candidates"][name].get("fit_warnings") or []),
        }
        for i, name in enumerate(result["ranking"])
    ]
    tracking.log_table(tracking_uri, run_id, ranking, "ranking.json")
    tracking.log_json(tracking_uri, run_id, result, "fit_params.json")
    tracking.log_artifact_file(tracking_uri, run_id, str(out_dir / "curves.png"))
    if ntk:
        tracking.log_artifact_file(tracking_uri, run_id, str(out_dir / "ntk_spectrum.png"))
    tracking.log_metrics(tracking_uri, run_id, [("selection_cost", result["cost"], 0)])
    if resumed:
        get_run_logger().info("resumed MLflow run %s of an interrupted attempt", run_id)
    return {
        "run_id": run_id,
        "resumed": resumed,
        "tracking_uri": tracking_uri,
        "tags": tags,
        "selection_key": selection_key,
        "selected": result["selected"],
        "ranking": ranking,
        "cost": result["cost"],
        "rank_on": cfg.rank_on,
    }


def _track_budget(tracking_uri: str, run_id: str, budget: dict, adaptive: dict | None) -> None:
    """Probe compute on the parent run (parameter x example units, and FLOPs)."""
    tracking.log_metrics(tracking_uri, run_id, [(k, float(v), 0) for k, v in budget.items()])
    params = {"adaptive": adaptive is not None}
    if adaptive:
        params.update({f"adaptive.{k}": v for k, v in adaptive["settings"].items()})
    tracking.log_params_and_tags(tracking_uri, run_id, params=params)


def _ntk_metrics(feats: dict) -> list[tuple[str, float, int]]:
    """Spectrum (step = eigenvalue index), alignment, F and its cost, for a candidate run."""
    keys = (
        "f_term",
        "effective_rank",
        "participation_ratio",
        "trace",
        "residual_norm_sq",
        "seconds",
        "peak_rss_mb",
        "t",
        "eta",
    )
    metrics = [(f"ntk.{k}", float(feats[k]), 0) for k in keys if feats.get(k) is not None]
    metrics += [("ntk.eigenvalue", float(v), k) for k, v in enumerate(feats["eigenvalues"])]
    metrics += [("ntk.alignment", float(v), k) for k, v in enumerate(feats["alignment"])]
    return metrics


def _keep_plot(plot: str, cache: Path, run_id: str) -> str:
    dest = cache / "plots" / f"selection-{run_id}.png"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(Path(plot).read_bytes())
    return str(dest)


def _prefect_artifacts(result: dict, summary: dict) -> None:
    create_table_artifact(
        summary["ranking"],
        key="selection-ranking",
        description=f"Ranking by {result['selector']} ({result['rank_on']})",
    )
    reg = summary.get("registry") or {}
    create_markdown_artifact(
        "\n".join(
            [
                f"# Selected: **{result['selected']}**",
                f"- selector: {result['selector']}, ranked on {result['rank_on']}",
                f"- MLflow run: `{summary['run_id']}` in `{summary['tracking_uri']}`"
                " (open with `lensllm ui`)",
                f"- registered version: {reg.get('version', '-')} "
                f"(promoted to champion: {reg.get('promoted', '-')})",
            ]
        ),
        key="selection-summary",
    )


def flow_with_runner(cfg: SelectionConfig):
    """The select flow with the task runner the config asks for."""
    return select_flow.with_options(task_runner=build_task_runner(cfg.runner))
