"""Benchmark output: a readable table on stderr, one JSON object per figure on stdout."""

import json
import statistics
import sys
import time
from contextlib import contextmanager

_rows: list[tuple[str, float, str, str]] = []


def emit(name: str, value: float, unit: str, note: str = "") -> None:
    print(json.dumps({"name": name, "value": round(value, 4), "unit": unit}), flush=True)
    _rows.append((name, value, unit, note))


def table(title: str) -> None:
    width = max(len(r[0]) for r in _rows) if _rows else 10
    print(f"\n{title}", file=sys.stderr)
    for name, value, unit, note in _rows:
        print(f"  {name:<{width}}  {value:>12.4f} {unit:<6} {note}", file=sys.stderr)
    _rows.clear()


def median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@contextmanager
def stopwatch():
    box = {}
    t0 = time.perf_counter()
    yield box
    box["s"] = time.perf_counter() - t0
