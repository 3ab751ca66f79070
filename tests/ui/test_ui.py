"""What a reviewer sees, checked in a real browser: Debian's Chromium driven by Playwright.

By default the test starts its own stack (SeaweedFS, MLflow server, Prefect server) on free
ports in a temporary root, registers the deployments and runs the tiny selection with
registration through a process worker (as ``tests/service/test_stack.py`` does), then opens
each page,
waits for the single-page app to render, checks the visible text and saves a screenshot:

* the MLflow experiment in model-training mode, the selection run listed with its duration;
* the selection (parent) run: its description (the decision in one paragraph), its dataset
  inputs, the registered version it produced, the rendered ``curves.png`` and the ranking table;
* the winner's candidate run: its chart of bits per byte against subset size (step);
* the registered model (versions, ``champion`` alias, description) and the version (the
  gate's reason);
* the Prefect UI: the deployments with the weekly cron schedule, the finished selection flow
  run, its ranking artifact and its task runs, named ``probe <candidate> @ <size>``.

``make ui-screenshots`` runs the same checks on the demo's own stores
(``LENSLLM_UI_SOURCE=demo``): ``.lensllm/mlflow.db`` served as ``lensllm ui`` serves it, and a
copy of the demo's Prefect database (``.prefect/prefect.db``) served by ``prefect server`` with
the deployments registered in the copy (the demo runs flows without deployments); the copy keeps
the user's database untouched. ``LENSLLM_UI_SCREENSHOTS=DIR`` keeps the screenshots in ``DIR``
(by default they go to the test's temporary folder).

MLflow 3.17's UI chooses between GenAI and model-training mode with a toggle kept in the
browser (local storage, GenAI by default); it does not read the experiment's
``mlflow.experimentKind`` tag. The link ``#/experiments/<id>?workflowType=machine_learning``
opens the experiment in model-training mode, and so do the links below.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra import deploy as deploy_mod
from infra import stack
from tasks.tracking import tags as T
from tasks.tracking.client import Tracker

CHROMIUM = Path("/usr/bin/chromium")
SOURCE_ENV = "LENSLLM_UI_SOURCE"  # "stack" (default) or "demo"
SHOTS_ENV = "LENSLLM_UI_SCREENSHOTS"  # keep the screenshots in this folder
ML_MODE = "workflowType=machine_learning"
WAIT_MS = 90_000  # the single-page apps render slowly on a busy 2-core machine
VIEWPORT = {"width": 1500, "height": 1000}
CHROMIUM_FLAGS = [
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The MLflow Assistant panel opens by itself on a first visit and covers a third of the page;
# mark it as already shown (the UI's own local-storage key) so the screenshots show the page.
MLFLOW_INIT = "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"

pytestmark = [
    pytest.mark.ui,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is missing: `make setup` installs Debian's chromium package",
    ),
]


@dataclass
class Site:
    """The servers a reviewer opens and what they should show."""

    mlflow: str  # MLflow UI base URL
    prefect: str  # Prefect UI base URL (its API under /api)
    tracking_uri: str
    experiment: str
    model: str
    flow_run_id: str
    deployed_run: bool  # the flow run was started by the weekly-selection deployment
    shots: Path

    @property
    def tracker(self) -> Tracker:
        return Tracker(self.tracking_uri)

    def mlflow_url(self, route: str) -> str:
        return f"{self.mlflow}/#/{route}?{ML_MODE}"


# --------------------------------------------------------------------------------------------
# Servers: the test's own stack, or the demo's stores
# --------------------------------------------------------------------------------------------
def _wait_http(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (loopback)
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.5)


def _stack_site(tmp: Path, shots: Path) -> Iterator[Site]:
    """The stack on free ports, deployments registered, the tiny selection run by a worker."""
    from tests.service.test_stack import _run_selection, _second_candidate

    root = tmp / "stack"
    ports = {"s3": stack.free_port(), "mlflow": stack.free_port(), "prefect": stack.free_port()}
    try:
        stack.up(root, ports=ports, timeout=240)
        env = stack.stack_env(root)
        deploy_mod.deploy(root)
        overrides = [
            f"candidates=[tiny-llama, {_second_candidate(tmp)}]",
            f"cache_dir={tmp / 'cache'}",
            f"tracking.uri={env['MLFLOW_TRACKING_URI']}",
        ]
        flow_run, seconds, _ = _run_selection(root, overrides, tmp / "worker.log")
        print(f"\nUI test: tiny selection through the stack's worker in {seconds:.1f} s")
        yield Site(
            mlflow=env["MLFLOW_TRACKING_URI"],
            prefect=env["PREFECT_API_URL"].removesuffix("/api"),
            tracking_uri=env["MLFLOW_TRACKING_URI"],
            experiment="lensllm-tiny",  # configs/tiny.yaml
            model="lensllm-tiny",
            flow_run_id=str(flow_run.id),
            deployed_run=True,
            shots=shots,
        )
    finally:
        stack.down(root)


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, env=env, cwd=stack.PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _demo_prefect(tmp: Path, procs: list) -> str:
    """A Prefect server on a copy of the demo's database, with the deployments registered in
    the copy; its base URL."""
    source = stack.PROJECT_ROOT / ".prefect" / "prefect.db"
    if not source.is_file():
        raise FileNotFoundError(f"{source} is missing: run `make demo` first")
    home = tmp / "prefect"
    home.mkdir()
    copy = home / "prefect.db"
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)  # consistent even while another process writes the demo's database
    port = stack.free_port()
    base = f"http://{stack.HOST}:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{copy}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_API_URL=f"{base}/api",  # the UI calls the API of the port it is served on
    )
    prefect = str(Path(sys.executable).parent / "prefect")
    cmd = [prefect, "server", "start", "--host", stack.HOST, "--port", str(port)]
    procs.append(_start(cmd, env, tmp / "prefect.log"))
    _wait_http(f"{base}/api/health")
    client = {**env, "PREFECT_API_URL": f"{base}/api"}
    client["LENSLLM_PROJECT_ROOT"] = str(stack.PROJECT_ROOT)
    deploy_mod.ensure_pool(client)
    done = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--all", "--prefect-file", str(deploy_mod.PREFECT_FILE)],
        env=client, cwd=stack.PROJECT_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, f"prefect deploy failed:\n{done.stdout[-3000:]}\n{done.stderr}"
    return base


def _demo_site(tmp: Path, shots: Path) -> Iterator[Site]:
    """The demo's MLflow store served as ``lensllm ui`` serves it, and its Prefect runs."""
    from flows.config import load_config

    cfg = load_config(str(stack.PROJECT_ROOT / "configs" / "demo.yaml"))
    db = stack.PROJECT_ROOT / ".lensllm" / "mlflow.db"
    if not db.is_file():
        raise FileNotFoundError(f"{db} is missing: run `make demo` first")
    uri = f"sqlite:///{db}"
    port = stack.free_port()
    procs: list[subprocess.Popen] = []
    try:
        cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
        cmd += ["--host", stack.HOST, "--port", str(port)]
        procs.append(_start(cmd, dict(os.environ), tmp / "mlflow.log"))
        prefect = _demo_prefect(tmp, procs)
        mlflow = f"http://{stack.HOST}:{port}"
        _wait_http(f"{mlflow}/health")
        run = _selection_run(Tracker(uri), cfg.tracking.experiment)
        yield Site(
            mlflow=mlflow,
            prefect=prefect,
            tracking_uri=uri,
            experiment=cfg.tracking.experiment,
            model=cfg.registry.model_name,
            flow_run_id=_flow_run_of(f"{prefect}/api", run.info.start_time),
            deployed_run=False,
            shots=shots,
        )
    finally:
        for proc in procs:
            _stop(proc)


def _flow_run_of(api_url: str, start_ms: int) -> str:
    """The completed select-model flow run during which the MLflow run started."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["select-model"])), limit=200
            )
    for run in runs:
        if run.state and run.state.is_completed() and run.start_time and run.end_time:
            if run.start_time.timestamp() * 1000 <= start_ms <= run.end_time.timestamp() * 1000:
                return str(run.id)
    raise AssertionError(f"no completed select-model flow run in {api_url} holds the MLflow run")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("ui")
    keep = os.environ.get(SHOTS_ENV)
    shots = Path(keep).resolve() if keep else tmp / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    source = os.environ.get(SOURCE_ENV, "stack")
    if source not in ("stack", "demo"):
        raise ValueError(f"{SOURCE_ENV} must be 'stack' or 'demo', got {source!r}")
    make = _demo_site if source == "demo" else _stack_site
    yield from make(tmp, shots)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Chromium with a fresh profile (Playwright cannot download a browser of its own here)."""
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport=VIEWPORT,
        )
        context.add_init_script(MLFLOW_INIT)
        context.set_default_timeout(WAIT_MS)
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser):
    page = browser.new_page()
    yield page
    page.close()


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def _selection_run(tracker: Tracker, experiment: str):
    """The newest finished selection run of ``experiment``."""
    exp = tracker.client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment!r} missing in {tracker.display_uri}"
    runs = tracker.client.search_runs(
        [exp.experiment_id],
        f"tags.`{T.RUN_KIND}` = 'selection' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    assert runs, f"no finished selection run in experiment {experiment!r}"
    return runs[0]


def _candidate_runs(tracker: Tracker, parent) -> list:
    return tracker.client.search_runs(
        [parent.info.experiment_id], f"tags.`{T.PARENT_RUN}` = '{parent.info.run_id}'"
    )


def _duration(ms: int) -> str:
    """A duration as the MLflow UI writes it (``Utils.formatDuration``)."""
    if ms < 500:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    if ms < 3_600_000:
        return f"{ms / 60_000:.1f}min"
    if ms < 86_400_000:
        return f"{ms / 3_600_000:.1f}h"
    return f"{ms / 86_400_000:.1f}d"


def _text(page) -> str:
    """The page's visible text with runs of white space as single spaces."""
    return re.sub(r"\s+", " ", page.locator("body").inner_text())


def _see(page, *texts: str) -> str:
    """Wait until every text is visible on the page; return the page's visible text."""
    from playwright.sync_api import expect

    for text in texts:
        expect(page.get_by_text(text, exact=False).first).to_be_visible(timeout=WAIT_MS)
    return _text(page)


def _shot(page, site: Site, name: str) -> Path:
    path = site.shots / f"{name}.png"
    page.wait_for_timeout(1000)  # let charts and images finish drawing
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000, f"{path} is suspiciously small"
    return path


def _winner_version(site: Site, run):
    """The registered version the selection produced (its selection key) and the version."""
    key = run.data.tags[T.SELECTION_KEY]
    versions = site.tracker.client.search_model_versions(f"name = '{site.model}'")
    found = [v for v in versions if v.tags.get(T.SELECTION_KEY) == key]
    assert len(found) == 1, f"{len(found)} versions of {site.model!r} carry selection {key}"
    return site.tracker.client.get_model_version(site.model, found[0].version)


# --------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------
def test_experiment_opens_in_model_training_mode_with_the_selection(site, page):
    run = _selection_run(site.tracker, site.experiment)
    exp_id = run.info.experiment_id
    n_runs = 1 + len(_candidate_runs(site.tracker, run))
    page.goto(site.mlflow_url(f"experiments/{exp_id}"))
    duration = _duration(run.info.end_time - run.info.start_time)
    # the registered version, linked from the row (fetched after the table renders)
    text = _see(page, run.info.run_name, duration, site.model)
    # model-training mode: the runs table with its columns, the registry in the side bar, and
    # none of GenAI mode's trace overview
    assert "Model registry" in text and "Run Name" in text and "Duration" in text, text
    assert "Token Usage" not in text and "Training runs" not in text, text
    # a re-run of the same selection adds no runs: one parent and one run per candidate
    runs = site.tracker.client.search_runs([exp_id])
    assert f"{len(runs)} matching runs" in text, text
    assert len(runs) >= n_runs
    _shot(page, site, "mlflow-experiment")


def test_selection_run_spans_the_flow_run(site):
    """The parent run starts when the selection starts and ends when it ends: its duration
    is the selection's, not the few seconds of logging at the end."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    run = _selection_run(site.tracker, site.experiment)
    with temporary_settings({PREFECT_API_URL: f"{site.prefect}/api"}):
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(site.flow_run_id)
    flow_start = flow_run.start_time.timestamp() * 1000
    flow_end = flow_run.end_time.timestamp() * 1000
    assert flow_start - 1000 <= run.info.start_time <= flow_start + 15_000
    assert flow_end - 15_000 <= run.info.end_time <= flow_end + 1000
    assert run.info.end_time - run.info.start_time > 0.7 * (flow_end - flow_start)


def test_selection_run_tells_the_decision(site, page):
    run = _selection_run(site.tracker, site.experiment)
    version = _winner_version(site, run)
    winner = run.data.tags[T.CANDIDATE_SELECTED]
    page.goto(site.mlflow_url(f"experiments/{run.info.experiment_id}/runs/{run.info.run_id}"))
    _see(page, "Description", "Runner-up", "Datasets", "Registered models")
    more = page.get_by_text("Show more", exact=True)
    if more.count():  # a narrow description column folds long descriptions
        more.first.click()
    text = _see(page, f"version {version.version}, ")
    note = run.data.tags[T.NOTE]
    # the description: winner, prediction with its interval, runner-up, compute, version, gate
    for part in (
        f"selected {winner}:",
        "interval",
        "Runner-up:",
        "Probe compute:",
        f"Registered as {site.model} version {version.version}",
    ):
        assert part in text, f"{part!r} not on the run page; note: {note}"
    # the gate's decision when the version was registered (a re-run's gate finds the version
    # already champion and says so on the version, not here)
    verdict = rf"version {version.version}, (promoted to champion|not promoted): \S"
    assert re.search(verdict, text), f"no gate decision on the run page; note: {note}"
    # the datasets (training pool and test split) and the registered version, linked
    assert re.search(r"\w+-train \(\w+\) Training", text), text
    assert re.search(rf"{re.escape(site.model)} v{version.version}\b", text), text
    assert _duration(run.info.end_time - run.info.start_time) in text
    _shot(page, site, "mlflow-selection-run")


def test_selection_run_shows_its_curves_and_ranking(site, page):
    run = _selection_run(site.tracker, site.experiment)
    route = f"experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts"
    page.goto(site.mlflow_url(route))
    _see(page, "curves.png", "ranking.json")
    page.get_by_text("curves.png", exact=True).first.click()
    image = page.locator("img[alt='curves.png']").first
    image.wait_for(state="visible")
    page.wait_for_function(
        "() => [...document.images].some(i => i.alt === 'curves.png' && i.naturalWidth > 0)"
    )
    assert image.evaluate("img => img.naturalWidth") >= 600  # the plot itself, not an icon
    _shot(page, site, "mlflow-selection-curves")

    page.get_by_text("ranking.json", exact=True).first.click()
    text = _see(page, "View as table", "predicted_loss", "interval_low", "p_best")
    for candidate in _candidate_names(site, run):
        assert candidate in text, (candidate, text)
    _shot(page, site, "mlflow-selection-ranking")


def _candidate_names(site: Site, run) -> list[str]:
    return [r.data.tags[T.CANDIDATE] for r in _candidate_runs(site.tracker, run)]


def test_candidate_run_charts_loss_against_subset_size(site, page):
    run = _selection_run(site.tracker, site.experiment)
    winner = run.data.tags[T.CANDIDATE_SELECTED]
    (cand,) = [r for r in _candidate_runs(site.tracker, run) if r.data.tags[T.CANDIDATE] == winner]
    metric = f"test_{run.data.params.get('rank_on', 'bits_per_byte')}"
    history = site.tracker.client.get_metric_history(cand.info.run_id, metric)
    sizes = sorted({m.step for m in history})
    assert len(sizes) >= 4 and sizes[0] == 0, sizes  # zero-shot and the ladder (+ the target)
    route = f"experiments/{run.info.experiment_id}/runs/{cand.info.run_id}/model-metrics"
    page.goto(site.mlflow_url(route))
    _see(page, "Model metrics")
    page.get_by_placeholder("Search metric charts").fill(metric)
    _see(page, f"({metric})")
    chart = page.locator(".js-plotly-plot").first
    chart.wait_for(state="visible")
    points = chart.locator(".point")
    page.wait_for_function(
        f"() => document.querySelectorAll('.js-plotly-plot .point').length >= {len(sizes)}"
    )
    assert points.count() == len(sizes)  # one point per subset size
    assert "Step" in _text(page)  # the x axis: step = subset size
    _shot(page, site, "mlflow-candidate-chart")


def test_registered_model_shows_versions_and_champion(site, page):
    run = _selection_run(site.tracker, site.experiment)
    version = _winner_version(site, run)
    champion = site.tracker.client.get_model_version_by_alias(site.model, T.ALIAS_CHAMPION)
    page.goto(site.mlflow_url(f"models/{site.model}"))
    text = _see(page, "Versions", f"Version {champion.version}", "Latest alias move")
    model = site.tracker.client.get_registered_model(site.model)
    assert model.description.split(" Full history")[0] in text
    assert re.search(r"@ ?champion", text), text
    page.get_by_text("Tags", exact=True).first.click()  # fold the alias history to see versions
    page.get_by_text("Add", exact=True).first.wait_for(state="hidden")
    _shot(page, site, "mlflow-registered-model")

    page.goto(site.mlflow_url(f"models/{site.model}/versions/{version.version}"))
    # the version links to the selection run (its name, fetched after the page renders)
    text = _see(page, f"Version {version.version}", T.GATE_REASON, run.info.run_name)
    assert "Source Run" in text
    assert version.description in text
    assert version.tags[T.GATE_REASON] in text
    if version.version == champion.version:
        assert re.search(r"@ ?champion", text), text
    _shot(page, site, "mlflow-model-version")


# --------------------------------------------------------------------------------------------
# Prefect
# --------------------------------------------------------------------------------------------
def _prefect_ui_api(site: Site) -> str:
    """The API URL the Prefect UI at ``site.prefect`` calls (its server tells it)."""
    with urllib.request.urlopen(f"{site.prefect}/ui-settings", timeout=10) as resp:  # noqa: S310
        return json.loads(resp.read())["api_url"]


def _require_prefect_ui(site: Site) -> None:
    """The stack starts the Prefect server with PREFECT_UI_API_URL: on any port but 4200 the
    UI would otherwise call http://127.0.0.1:4200/api and every page say it cannot connect.
    Fail at once, with the reason, rather than wait for pages that cannot render."""
    api_url = _prefect_ui_api(site)
    assert api_url == f"{site.prefect}/api", (
        f"the Prefect UI at {site.prefect} calls {api_url}: the server needs "
        f"PREFECT_UI_API_URL={site.prefect}/api"
    )


def test_prefect_ui_calls_its_own_server(site):
    """The Prefect UI asks its server for the API URL to call; on a port other than 4200 the
    server must be told (PREFECT_UI_API_URL), or every page says it cannot connect."""
    _require_prefect_ui(site)
    assert _prefect_ui_api(site) == f"{site.prefect}/api"


def test_prefect_lists_the_deployments_with_the_weekly_schedule(site, page):
    _require_prefect_ui(site)
    page.goto(f"{site.prefect}/deployments")
    names = [part for name in deploy_mod.DEPLOYMENTS for part in name.split("/")]
    _see(page, "At 03:00 AM, only on Monday", *names)
    _shot(page, site, "prefect-deployments")


def test_prefect_flow_run_has_the_ranking_artifact(site, page):
    _require_prefect_ui(site)
    run = _selection_run(site.tracker, site.experiment)
    page.goto(f"{site.prefect}/runs/flow-run/{site.flow_run_id}")
    text = _see(page, "Completed", "select-model", "Artifacts")
    if site.deployed_run:
        assert "weekly-selection" in text
    page.get_by_text("Artifacts", exact=True).first.click()
    _see(page, "selection-ranking", "selection-summary")
    _shot(page, site, "prefect-flow-run")

    page.get_by_text("selection-ranking", exact=True).first.click()
    text = _see(page, "Ranking by", "predicted_loss", "p_best")
    for candidate in _candidate_names(site, run):
        assert candidate in text, (candidate, text)
    _shot(page, site, "prefect-ranking-artifact")


def test_prefect_task_runs_say_what_they_are(site, page):
    """Task runs are named for what they compute (``probe <candidate> @ <size>``), so the flow
    run's task list reads as the selection's steps, not ``probe-0b4``."""
    _require_prefect_ui(site)
    run = _selection_run(site.tracker, site.experiment)
    candidate = sorted(_candidate_names(site, run))[0]
    size = run.data.params["ladder"].split(",")[0]
    page.goto(f"{site.prefect}/runs/flow-run/{site.flow_run_id}")
    _see(page, "Completed", "select-model")
    page.get_by_text("Task Runs", exact=True).first.click()
    text = _see(page, f"probe {candidate} @ {size}")
    assert not re.search(r"\bprobe-[0-9a-f]{3}\b", text), "a task run without a readable name"
    _shot(page, site, "prefect-task-runs")
