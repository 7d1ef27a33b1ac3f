#!/usr/bin/env python3
"""Runs Google Benchmark programs in alternating rounds and compares them round by round.

The machines these benchmarks run on drift in speed by 10-30% within an hour, so two
configurations timed one after the other can differ by more than what separates them. This
script runs each configuration once per round, in the order given and then reversed on every
other round (A B C, C B A, ...), and compares the configurations within each round: what it
reports is the spread of those per-round ratios, not a comparison of separate runs.

    bench/rounds.py --rounds 5 --filter train_step \\
        1t='OMP_NUM_THREADS=1 build/bench/bench_model' \\
        2t='OMP_NUM_THREADS=2 build/bench/bench_model'

Each LABEL=COMMAND is a bash command line of a Google Benchmark program (mpirun ... works: only
the program's JSON on standard output is read). The script appends --benchmark_format=json, the
filter and --benchmark_repetitions (medians of that many). It prints, per case, each
configuration's median time over the rounds with its range, the "peak" counter when the program
reports one (share of bench_peak's FMA peak), and for every configuration after the first its
speed-up over the first (the first's time over its time) in each round: min, median, max, and a
95% confidence interval of the median speed-up (from 6 rounds on).

Short rounds give the truest ratios, as the runs compared are then seconds apart: many rounds
of one repetition rather than a few of three (20 rounds of bench/run_dist.sh's three layouts
with --repetitions 1 take about 12 minutes).
"""

import argparse
import math
import shlex
import statistics
import subprocess
import sys

import gbench  # beside this script

WHO = "rounds.py"
LEVEL = 0.95  # of the interval of each median speed-up


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=COMMAND",
                        help="a configuration: its label and the bash command that runs it")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--filter", default=".", help="--benchmark_filter for every command")
    parser.add_argument("--repetitions", type=int, default=3,
                        help="--benchmark_repetitions per run; the median is used (default 3)")
    args = parser.parse_args()
    runs = []
    for run in args.runs:
        label, sep, command = run.partition("=")
        if not sep or not label or not command:
            parser.error(f"expected LABEL=COMMAND, got {run!r}")
        runs.append((label, command))
    labels = [label for label, _ in runs]
    if len(set(labels)) != len(labels):
        parser.error(f"labels must differ, got {labels}")
    if args.rounds < 1 or args.repetitions < 1:
        parser.error("--rounds and --repetitions must be at least 1")
    return args, runs


def run_once(command, args):
    """{case: (median ms, peak share or None)} of one run of command."""
    full = (f"{command} --benchmark_format=json --benchmark_filter={shlex.quote(args.filter)} "
            f"--benchmark_repetitions={args.repetitions} "
            "--benchmark_report_aggregates_only=true")
    done = subprocess.run(["bash", "-c", full], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{WHO}: {full!r} failed ({done.returncode}):\n{done.stderr}")
    report = gbench.parse_report(done.stdout, WHO)
    out = {case: (b["ms"], b.get("peak"))
           for case, b in gbench.medians(report, args.repetitions, WHO).items()}
    for case, (ms, _) in out.items():
        if ms <= 0:
            sys.exit(f"{WHO}: {case} took {ms} ms in {full!r}")
    if not out:
        sys.exit(f"{WHO}: no case of {full!r} matches --filter {args.filter!r}")
    return out


def milliseconds(ms):
    """4 significant digits, but whole numbers from 1 s on (no exponents)."""
    return f"{ms:.4g}" if ms < 1000 else f"{ms:.0f}"


def percent(share):
    return f"{share:.1f}"


def spread(values, fmt):
    """The median of values, then their range: "m (lo-hi)"; fmt formats one value."""
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def median_interval(values, level=LEVEL):
    """(lo, hi): a confidence interval, at a level of at least level, for the median of the
    population the values were drawn from; None when there are too few values for one (under 6
    at 95%). It is the distribution-free interval of order statistics: with n values sorted, the
    median lies between the k-th smallest and the k-th largest unless at most k - 1 values fall
    on one side of it, which happens with probability 2 P(B <= k - 1), B ~ Binomial(n, 1/2); k is
    the largest for which that stays within 1 - level. It takes the values as independent draws:
    a drift of the machine's speed over the rounds, which the ratios within a round are meant to
    cancel, makes it too narrow where they do not."""
    x = sorted(values)
    n = len(x)
    k, below = 0, 0.0  # below: P(B <= k - 1) for the next k
    while k < n // 2 and 1 - 2 * (below + math.comb(n, k) / 2**n) >= level:
        below += math.comb(n, k) / 2**n
        k += 1
    return (x[k - 1], x[n - k]) if k else None


def common_cases(results):
    """The cases of every run, in the first run's order; the others are named on stderr."""
    runs = [run for rounds in results.values() for run in rounds]
    cases = [c for c in runs[0] if all(c in run for run in runs)]
    dropped = sorted(set().union(*runs) - set(cases))
    if dropped:
        print(f"{WHO}: left out, not in every run: {', '.join(dropped)}", file=sys.stderr)
    return cases


def print_table(args, runs, results, cases):
    first = runs[0][0]
    with_peak = any(run[c][1] is not None for rounds in results.values() for run in rounds
                    for c in cases)
    print(f"{args.rounds} rounds, medians of {args.repetitions} repetitions each; ms: median "
          f"over the rounds (min-max); speed-up: {first}'s time over the other's, per round; "
          f"interval: a {LEVEL:.0%} confidence interval of the median speed-up (none from too "
          f"few rounds)")
    print()
    columns = ["case"]
    for label, _ in runs:
        columns += [f"{label}: ms"] + ([f"{label}: % of peak"] if with_peak else [])
    for label, _ in runs[1:]:
        columns += [f"speed-up of {label}: min, median, max",
                    f"speed-up of {label}: {LEVEL:.0%} interval of the median"]
    print("| " + " | ".join(columns) + " |")
    print("| --- " * len(columns) + "|")
    for case in cases:
        cells = [case]
        for label, _ in runs:
            cells.append(spread([run[case][0] for run in results[label]], milliseconds))
            if with_peak:
                peaks = [100 * run[case][1] for run in results[label] if run[case][1] is not None]
                cells.append(spread(peaks, percent) if peaks else "")
        for label, _ in runs[1:]:
            ratios = [a[case][0] / b[case][0] for a, b in zip(results[first], results[label])]
            cells.append("{:.2f}x, {:.2f}x, {:.2f}x".format(min(ratios), statistics.median(ratios),
                                                           max(ratios)))
            interval = median_interval(ratios)
            cells.append("{:.2f}x-{:.2f}x".format(*interval) if interval else "-")
        print("| " + " | ".join(cells) + " |")


def main():
    args, runs = parse_args()
    results = {label: [] for label, _ in runs}  # label -> one {case: (ms, peak)} per round
    for r in range(args.rounds):
        order = runs if r % 2 == 0 else runs[::-1]
        for label, command in order:
            print(f"round {r + 1}/{args.rounds}: {label}", file=sys.stderr, flush=True)
            results[label].append(run_once(command, args))
    cases = common_cases(results)
    if not cases:
        sys.exit(f"{WHO}: no case is in every run")
    print_table(args, runs, results, cases)


if __name__ == "__main__":
    main()
