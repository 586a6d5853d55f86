"""
Shared helpers for the benchmarks in bench/: the machine description,
percentiles, medians over repeated rounds, and the RESULT line.

Every benchmark prints a human summary and exactly one line that starts
with ``RESULT `` followed by a JSON object (machine, date, parameters,
figures), so results can be collected with ``grep '^RESULT '``.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
from typing import Any, Dict, Iterable, List, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def machine() -> Dict[str, Any]:
    """
    What the numbers were measured on.
    """
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "wasmtime": importlib.metadata.version("wasmtime"),
        "twisted": importlib.metadata.version("twisted"),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in load] if load else None,
    }


def _cpu_times() -> List[int]:
    with open("/proc/stat", encoding="ascii") as f:
        return [int(x) for x in f.readline().split()[1:]]


class CpuSteal:
    """
    The share of CPU time the hypervisor took (steal) and the machine's busy
    share, between start and stop, from /proc/stat: tells how contended
    the (shared) machine was while a benchmark ran.
    """

    def __init__(self) -> None:
        try:
            self._start = _cpu_times()
        except (OSError, ValueError):
            self._start = None

    def stop(self) -> Dict[str, Any]:
        if self._start is None:
            return {}
        end = _cpu_times()
        delta = [b - a for a, b in zip(self._start, end)]
        total = sum(delta[:8]) or 1
        idle = delta[3] + delta[4]
        steal = delta[7] if len(delta) > 7 else 0
        return {
            "steal_pct": round(100.0 * steal / total, 1),
            "busy_pct_all_cores": round(100.0 * (total - idle - steal) / total, 1),
        }


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """
    Nearest-rank percentile of already sorted values, C{q} in [0, 100].
    """
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(samples_us: Iterable[float]) -> Dict[str, float]:
    """
    p50, p90, p99, p99.9, mean, min and max of microsecond samples.
    """
    values = sorted(samples_us)
    return {
        "n": len(values),
        "p50_us": round(percentile(values, 50), 2),
        "p90_us": round(percentile(values, 90), 2),
        "p99_us": round(percentile(values, 99), 2),
        "p999_us": round(percentile(values, 99.9), 2),
        "mean_us": round(statistics.fmean(values), 2),
        "min_us": round(values[0], 2),
        "max_us": round(values[-1], 2),
    }


def median_of_rounds(rounds: List[Dict[str, float]]) -> Dict[str, Any]:
    """
    For each figure, the median over rounds, and the spread (min..max).
    """
    out: Dict[str, Any] = {}
    for key in rounds[0]:
        if key == "n":
            out["n_per_round"] = rounds[0]["n"]
            continue
        values = [r[key] for r in rounds]
        out[key] = round(statistics.median(values), 2)
        out[key + "_range"] = [round(min(values), 2), round(max(values), 2)]
    out["rounds"] = len(rounds)
    return out


def emit(
    name: str, parameters: Dict[str, Any], figures: Dict[str, Any], contention: Dict[str, Any] = None
) -> None:
    """
    Print the machine-readable result line.
    """
    result = {
        "benchmark": name,
        "date": now(),
        "machine": machine(),
        "contention": contention or {},
        "parameters": parameters,
        "figures": figures,
    }
    print("RESULT " + json.dumps(result, sort_keys=False, separators=(",", ":")), flush=True)


def fmt(stats: Dict[str, Any]) -> str:
    """
    One human line from a (median-of-rounds) summary.
    """
    return (
        f"p50 {stats['p50_us']:9.2f} us  p99 {stats['p99_us']:9.2f} us  "
        f"mean {stats['mean_us']:9.2f} us  (p50 range {stats['p50_us_range'][0]:.2f}"
        f"..{stats['p50_us_range'][1]:.2f}, p99 range {stats['p99_us_range'][0]:.2f}"
        f"..{stats['p99_us_range'][1]:.2f}, {stats['rounds']} rounds)"
    )
