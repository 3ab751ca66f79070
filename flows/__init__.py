"""Prefect flows, the typed config and the ``lensllm`` command line.

Importing this package (every entry point does: ``lensllm``, ``python -m flows.cli``, a
deployment's ``flows/...:flow`` and the tests) turns Prefect's telemetry off unless the
environment says otherwise. The embedded server ``lensllm select`` starts would otherwise send a
heartbeat to prefect.io and, on a machine without internet, log ``ERROR | ... Failed to send
telemetry`` on every run. ``prefect.toml`` says the same, but Prefect reads it only from the
current folder: a run started anywhere else missed it. ``DO_NOT_TRACK`` does the same for
Prefect's client-side analytics (and its first-run notice in a terminal). The settings are read
when Prefect starts its server, so setting them here, before any flow runs, is enough. The
embedded server's start-up allowance is prefect.toml's 90 s for the same reason (Prefect's 20 s
default is too short on a loaded 2-core machine).
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
