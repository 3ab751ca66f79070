"""What ``lensllm calibration`` prints: the record per interval level, one line per selection
or audit, and per selector."""

from __future__ import annotations

import statistics

from tasks.records.schema import CheckedSelection, TargetCheck, count_held
from tasks.reporting.live_record import by_level

HEADER = (
    "Live calibration record. Every candidate trained at the target and measured counts, not\n"
    "only the winner: the winner is the one predicted best, so a record of winners only is biased."
)


def print_record(record: list[CheckedSelection], where: str) -> None:
    """The whole record: header, levels, selections and audits, selectors."""
    checks = [c for entry in record for c in entry.checks]
    kinds = [entry.kind for entry in record]
    print(HEADER)
    print(
        f"{plural(kinds.count('selection'), 'selection')} and "
        f"{plural(kinds.count('audit'), 'audit')} ({where}): {len(checks)} checks at the target."
    )
    print_levels(checks)
    print("\nSelections and audits (held/stated per level; the misses by name, log error):")
    for entry in record:
        print(entry_line(entry))
    print_per_selector(record)


def print_levels(checks: list[TargetCheck]) -> None:
    print("\nper level: intervals that held the measured loss, median log width ln(upper/lower)")
    print(f"  {'level':>6} {'stated':>7} {'held':>5} {'share':>6} {'median log width':>17}")
    for r in by_level(checks):
        print(
            f"  {r.level:>6.0%} {r.stated:>7} {r.held:>5} {r.share_held:>6.0%} "
            f"{r.median_log_width:>17.3f}"
        )
    none = sum(c.held is None for c in checks)
    print(f"  no interval stated: {plural(none, 'check')} (counted apart, never as held)")


def entry_line(entry: CheckedSelection) -> str:
    """One selection or audit: what it chose and how its checks fared."""
    source = f"run {entry.source[:8]}" if entry.kind == "selection" else entry.source
    stated = [c for c in entry.checks if c.held is not None]
    levels = sorted({c.level for c in stated})
    parts = []
    for level in levels:
        held, n = count_held(c.held for c in stated if c.level == level)
        parts.append(f"{level:.0%} {held}/{n} held")
    if len(stated) < len(entry.checks):
        parts.append(f"{len(entry.checks) - len(stated)} without an interval")
    missed = [f"{c.candidate} ({c.log_error:+.3f})" for c in entry.checks if c.held is False]
    if missed:
        parts.append("missed " + ", ".join(missed))
    if entry.winner_only:
        parts.append("the winner's check only (an older record)")
    return (
        f"  {entry.kind:<9} {entry.task:<20} {entry.selector:<8} chose {entry.selected:<22} "
        f"{len(entry.checks)} checked: " + "; ".join(parts) + f"  [{source}]"
    )


def print_per_selector(record: list[CheckedSelection]) -> None:
    print("\nper selector: checks, intervals held (of those stated), median |log error|")
    for selector in sorted({entry.selector for entry in record}):
        part = [c for entry in record if entry.selector == selector for c in entry.checks]
        held, stated = count_held(c.held for c in part)
        share = f"{held / stated:.0%}" if stated else "no interval stated"
        error = statistics.median(abs(c.log_error) for c in part)
        print(f"  {selector:<12} {len(part):>4}  {held}/{stated} ({share})  {error:.3f}")


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"
