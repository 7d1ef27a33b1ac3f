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

--save FILE keeps every round's times in FILE, a new file (JSON, rewritten whole after each
round, so an interrupted set keeps the rounds it finished). --load FILE... runs nothing: it
prints the table of the rounds saved in one or more such files, pooled, for sets of the same
configurations (the same binaries on the same machine) whose intervals alone are too wide; it
refuses sets of other labels or repetitions:

    bench/rounds.py --load monday.json tuesday.json
"""

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys

import gbench  # beside this script

WHO = "rounds.py"
LEVEL = 0.95  # of the interval of each median speed-up


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", metavar="LABEL=COMMAND",
                        help="a configuration: its label and the bash command that runs it")
    # Defaults set below, so that --load can tell which options were given.
    parser.add_argument("--rounds", type=int, help="rounds (default 5)")
    parser.add_argument("--filter", help="--benchmark_filter for every command")
    parser.add_argument("--repetitions", type=int,
                        help="--benchmark_repetitions per run; the median is used (default 3)")
    parser.add_argument("--save", metavar="FILE",
                        help="keep every round's times in FILE (JSON), rewritten after each round")
    parser.add_argument("--load", nargs="+", metavar="FILE",
                        help="run nothing: pool the rounds saved (--save) in these files")
    args = parser.parse_args()
    if args.load:
        given = [args.rounds, args.filter, args.repetitions, args.save]
        if args.runs or any(option is not None for option in given):
            parser.error("--load takes no LABEL=COMMAND, --rounds, --filter, --repetitions or "
                         "--save: it runs nothing")
        return args, []
    args.rounds = 5 if args.rounds is None else args.rounds
    args.filter = "." if args.filter is None else args.filter
    args.repetitions = 3 if args.repetitions is None else args.repetitions
    if not args.runs:
        parser.error("expected at least one LABEL=COMMAND (or --load FILE...)")
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


def save(path, args, labels, results):
    """Writes the rounds so far to path whole: a temporary file beside it, then renamed over it,
    so that path never holds half a set. Exits naming path when it cannot be written."""
    data = {"labels": labels, "repetitions": args.repetitions,
            "rounds": [{label: results[label][r] for label in labels}
                       for r in range(len(results[labels[0]]))]}
    temporary = f"{path}.tmp"
    try:
        with open(temporary, "w") as out:
            json.dump(data, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError as e:
        if os.path.isfile(temporary):
            os.remove(temporary)
        sys.exit(f"{WHO}: --save {path}: {e}")


def read_set(path):
    """(labels, repetitions, {label: one {case: (ms, peak)} per round}) saved in path by --save.
    Exits naming path when it cannot be read or is not such a set."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        sys.exit(f"{WHO}: --load {path}: {e}")
    except ValueError as e:
        sys.exit(f"{WHO}: --load {path}: not JSON ({e})")
    try:
        labels, repetitions = data["labels"], data["repetitions"]
        if not labels or len(set(labels)) != len(labels):
            raise ValueError("labels must be distinct, at least 1")
        if not all(isinstance(label, str) for label in labels):
            raise ValueError("labels must be strings")
        results = {label: [] for label in labels}
        for r in data["rounds"]:
            for label in labels:
                run = {case: (float(ms), None if peak is None else float(peak))
                       for case, (ms, peak) in r[label].items()}
                if not all(ms > 0 for ms, _ in run.values()):
                    raise ValueError("times must be positive")
                results[label].append(run)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        sys.exit(f"{WHO}: --load {path}: not a set saved by --save ({e!r})")
    if not results[labels[0]]:
        sys.exit(f"{WHO}: --load {path}: no rounds")
    return labels, repetitions, results


def load(paths):
    """(labels, repetitions, results) of the sets saved in paths, their rounds pooled. Exits
    naming the file that is given twice or whose labels or repetitions differ from the first's."""
    labels, repetitions, results = None, None, None
    for i, path in enumerate(paths):
        if path in paths[:i]:
            sys.exit(f"{WHO}: --load {path}: given twice")
        these, reps, runs = read_set(path)
        if labels is None:
            labels, repetitions, results = these, reps, runs
        elif (these, reps) != (labels, repetitions):
            sys.exit(f"{WHO}: --load {path}: configurations {these} with {reps} repetitions, "
                     f"where {paths[0]} has {labels} with {repetitions} repetitions")
        else:
            for label in labels:
                results[label] += runs[label]
    return labels, repetitions, results


def print_table(repetitions, labels, results, cases):
    first = labels[0]
    count = len(results[first])
    with_peak = any(run[c][1] is not None for rounds in results.values() for run in rounds
                    for c in cases)
    print(f"{count} rounds, medians of {repetitions} repetitions each; ms: median "
          f"over the rounds (min-max); speed-up: {first}'s time over the other's, per round; "
          f"interval: a {LEVEL:.0%} confidence interval of the median speed-up (none from too "
          f"few rounds)")
    print()
    columns = ["case"]
    for label in labels:
        columns += [f"{label}: ms"] + ([f"{label}: % of peak"] if with_peak else [])
    for label in labels[1:]:
        columns += [f"speed-up of {label}: min, median, max",
                    f"speed-up of {label}: {LEVEL:.0%} interval of the median"]
    print("| " + " | ".join(columns) + " |")
    print("| --- " * len(columns) + "|")
    for case in cases:
        cells = [case]
        for label in labels:
            cells.append(spread([run[case][0] for run in results[label]], milliseconds))
            if with_peak:
                peaks = [100 * run[case][1] for run in results[label] if run[case][1] is not None]
                cells.append(spread(peaks, percent) if peaks else "")
        for label in labels[1:]:
            ratios = [a[case][0] / b[case][0] for a, b in zip(results[first], results[label])]
            cells.append("{:.2f}x, {:.2f}x, {:.2f}x".format(min(ratios), statistics.median(ratios),
                                                           max(ratios)))
            interval = median_interval(ratios)
            cells.append("{:.2f}x-{:.2f}x".format(*interval) if interval else "-")
        print("| " + " | ".join(cells) + " |")


def run_rounds(args, runs):
    """(labels, {label: one {case: (ms, peak)} per round}); with --save, the set is saved
    (empty) before the first round, so that a path that cannot be written fails at once, and
    again after each round. Exits, running nothing, when the --save file exists: it may hold an
    earlier set."""
    labels = [label for label, _ in runs]
    results = {label: [] for label in labels}
    if args.save:
        if os.path.lexists(args.save):
            sys.exit(f"{WHO}: --save {args.save}: exists (an earlier set?); remove it or give "
                     "another name")
        save(args.save, args, labels, results)
    for r in range(args.rounds):
        order = runs if r % 2 == 0 else runs[::-1]
        for label, command in order:
            print(f"round {r + 1}/{args.rounds}: {label}", file=sys.stderr, flush=True)
            results[label].append(run_once(command, args))
        if args.save:
            save(args.save, args, labels, results)
    return labels, results


def main():
    args, runs = parse_args()
    if args.load:
        labels, repetitions, results = load(args.load)
    else:
        labels, results = run_rounds(args, runs)
        repetitions = args.repetitions
    cases = common_cases(results)
    if not cases:
        sys.exit(f"{WHO}: no case is in every run")
    print_table(repetitions, labels, results, cases)


if __name__ == "__main__":
    main()
