"""Measuring this checkout beside another one (``--baseline``, e.g. a ``git worktree`` of an older commit),
alternating round by round so machine drift hits both alike: medians per key, every run, and this/baseline
ratios. The benches that use it run each measurement in a fresh interpreter importing the checkout it is given."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def compare(measure: Callable[[Path], dict[str, float]], baseline: Path | None, rounds: int) -> dict[str, Any]:
    """``measure(checkout)`` for this checkout (and ``baseline``) ``rounds`` times, alternating; the report."""
    trees = {"this": ROOT} | ({"baseline": baseline.resolve()} if baseline else {})
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(rounds):
        for name, repo in trees.items():
            runs[name].append(measure(repo))
    report: dict[str, Any] = {"rounds": rounds, "checkouts": {k: str(v) for k, v in trees.items()}}
    for name, results in runs.items():
        report[name] = {key: statistics.median(r[key] for r in results) for key in results[0]} | {"runs": results}
    if baseline:
        report["ratio_this_to_baseline"] = {
            key: round(report["this"][key] / report["baseline"][key], 3) if report["baseline"][key] else None
            for key in runs["this"][0]
        }
    return report


def emit(report: dict[str, Any], out: Path | None) -> None:
    """The report as JSON on stdout, and into ``out`` when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")
