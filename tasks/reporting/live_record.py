"""The live calibration record summarised: per interval level, the share of stated intervals
that held the measured loss and their median log width ``ln(upper / lower)``, over every
candidate checked at the target by every tracked selection and audit.

Every checked candidate counts, not only the winner: the winner is the candidate predicted
best, so a record of winners only is biased. A check without an interval (too few probes to
calibrate one) is counted apart, never as held.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from tasks.records.errors import AuditFileError, MissingFileError
from tasks.records.schema import CheckedSelection, Record, TargetCheck


class LevelRecord(Record):
    """The stated intervals of one nominal level: how many held, and how wide they were."""

    level: float
    stated: int
    held: int
    share_held: float
    median_log_width: float


def log_width(check: TargetCheck) -> float:
    """``ln(upper / lower)`` of the check's interval; NaN where none was stated."""
    if check.held is None:
        return math.nan
    return math.log(check.interval_high / check.interval_low)


def by_level(checks: Iterable[TargetCheck]) -> list[LevelRecord]:
    """One record per nominal level present among the stated intervals, lowest level first."""
    groups: dict[float, list[TargetCheck]] = {}
    for check in checks:
        if check.held is not None:
            groups.setdefault(round(check.level, 6), []).append(check)
    records = []
    for level, part in sorted(groups.items()):
        held = sum(c.held is True for c in part)
        records.append(
            LevelRecord(
                level=level,
                stated=len(part),
                held=held,
                share_held=held / len(part),
                median_log_width=statistics.median(log_width(c) for c in part),
            )
        )
    return records


def read_audit(path: str | Path) -> CheckedSelection:
    """An audit report on disk: ``audit.json``, or the folder that holds it."""
    file = Path(path)
    if file.is_dir():
        file = file / "audit.json"
    if not file.is_file():
        raise MissingFileError(
            f"no audit report at {str(file)!r}: pass an audit.json that `lensllm audit` wrote "
            "(or its --out folder)"
        )
    try:
        return CheckedSelection.from_audit(json.loads(file.read_text()), str(file))
    except (ValueError, KeyError, TypeError, ValidationError) as err:
        raise AuditFileError(
            f"{str(file)!r} is not an audit report that `lensllm audit` wrote ({err}); "
            "pass its audit.json"
        ) from err


def audit_table(path: str | Path, task: str) -> Path:
    """The loss table an audit of ``task`` wrote beside its report (``<task>.csv`` in the
    audit's folder); ``path`` is the audit.json or its folder."""
    file = Path(path)
    table = (file if file.is_dir() else file.parent) / f"{task}.csv"
    if not table.is_file():
        raise MissingFileError(
            f"the audit at {str(path)!r} has no loss table {str(table)!r} beside its report; "
            "`lensllm audit` writes both (re-run it, or pass the table with --table)"
        )
    return table


def combine(
    tracked: list[CheckedSelection], audits: list[CheckedSelection]
) -> tuple[list[CheckedSelection], list[CheckedSelection]]:
    """The tracked selections and the audits on disk, each counted once: an audit whose
    selection run is already in the tracked record (it logged ``audit.json`` there) adds
    nothing. Returns ``(record, left_out)``."""
    seen = {entry.selection_run for entry in tracked if entry.selection_run}
    record, left_out = list(tracked), []
    for audit in audits:
        if audit.selection_run and audit.selection_run in seen:
            left_out.append(audit)
            continue
        seen.add(audit.selection_run)
        record.append(audit)
    return record, left_out


def check_rows(record: list[CheckedSelection]) -> list[dict]:
    """One row per check, with the selection or audit it belongs to."""
    rows = []
    for entry in record:
        for check in entry.checks:
            rows.append(
                {
                    "kind": entry.kind,
                    "source": entry.source,
                    "task": entry.task,
                    "selector": entry.selector,
                    "selected": entry.selected,
                    "winner": check.candidate == entry.selected,
                    **check.model_dump(),
                    "log_error": check.log_error,
                    "log_width": log_width(check),
                    "held": check.held,
                }
            )
    return rows


def write_record(record: list[CheckedSelection], out_dir: str | Path) -> tuple[str, str]:
    """``live_calibration.csv`` (one row per check) and ``live_calibration.json`` (the levels,
    the count without an interval, and every selection and audit with its checks)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = check_rows(record)
    csv_path, json_path = out / "live_calibration.csv", out / "live_calibration.json"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["kind"])
        writer.writeheader()
        writer.writerows(rows)
    checks = [c for entry in record for c in entry.checks]
    summary = {
        "counts": "every candidate checked at the target, not only the winner",
        "checks": len(checks),
        "no_interval": sum(c.held is None for c in checks),
        "levels": [r.model_dump() for r in by_level(checks)],
        "record": [entry.model_dump(mode="json") for entry in record],
    }
    json_path.write_text(json.dumps(_strict_json(summary), indent=2, allow_nan=False) + "\n")
    return str(csv_path), str(json_path)


def _strict_json(value):
    """NaN (no interval stated) as null: strict JSON that every reader accepts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict_json(v) for v in value]
    return value
