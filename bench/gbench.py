"""Google Benchmark's JSON output (--benchmark_format=json), as the bench scripts read it."""

import json
import re
import sys

MS_PER_UNIT = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_report(text, who):
    """The JSON report in a program's standard output; text before or after it (mpirun's, a
    program's own) is skipped. Exits naming who when there is none."""
    start = re.search(r'\{\s*"context"\s*:', text)
    if not start:
        sys.exit(f"{who}: no Google Benchmark JSON in the output:\n{text}")
    try:
        report, _ = json.JSONDecoder().raw_decode(text, start.start())
    except json.JSONDecodeError as e:
        sys.exit(f"{who}: unreadable Google Benchmark JSON ({e}):\n{text}")
    return report


def medians(report, repetitions, who):
    """{case: entry} of each case's median over repetitions (with one repetition there are no
    aggregates: its only run), each entry with its time in milliseconds added as "ms". Exits
    naming who and the case when a case reported an error."""
    out = {}
    for b in report["benchmarks"]:
        if b.get("error_occurred") or b.get("skipped"):
            sys.exit(f"{who}: {b.get('run_name', b.get('name'))} failed: "
                     f"{b.get('error_message', b.get('skip_message', ''))}")
        if repetitions > 1 and b.get("aggregate_name") != "median":
            continue
        if repetitions == 1 and b.get("run_type") == "aggregate":
            continue
        out[b.get("run_name", b["name"])] = dict(b, ms=b["real_time"] * MS_PER_UNIT[b["time_unit"]])
    return out
