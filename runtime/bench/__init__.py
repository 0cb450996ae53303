"""`clipad bench`: latency, throughput, memory, start-up and parity of every backend and precision
the artifacts can serve here, beside the FLOP floor and the dual path's cost.

config (what to measure) -> run (the orchestration) -> rows (one backend/precision at every
batch size) over timing (the clock, percentiles, memory) and floors (FLOPs, matmul ceiling,
dual path); goals, machine and schema fill the report. records: the typed rows, goals and ratios;
report: BenchReport (the JSON, serialised in one place), its table and its plot.
"""

from clipad.runtime.bench.config import BenchConfig, validate
from clipad.runtime.bench.records import BenchRow, Goal, Ratio
from clipad.runtime.bench.report import BenchReport, format_markdown, write_plot
from clipad.runtime.bench.run import run_bench
from clipad.runtime.bench.schema import SCHEMA_VERSION
from clipad.runtime.bench.timing import percentiles, time_backend, time_calls

__all__ = [
    "SCHEMA_VERSION",
    "BenchConfig",
    "BenchReport",
    "BenchRow",
    "Goal",
    "Ratio",
    "format_markdown",
    "percentiles",
    "run_bench",
    "time_backend",
    "time_calls",
    "validate",
    "write_plot",
]
