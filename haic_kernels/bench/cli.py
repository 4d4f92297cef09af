"""`haic bench`: time benchmark suites, print a comparison table, optionally save JSON and a plot.

    haic bench --list
    haic bench patchify --size tiny                      # CPU, seconds
    haic bench all --size full --json out/bench.json --plot out/bench.png
    haic bench --show benchmarks/results/patchify-h100-2026-11-21.json
    haic bench launches --config tiny --backend triton   # kernel / sync counts (launches.py)

Also runs as ``python -m haic_kernels.bench.cli``. Exit status: 0 when every case that could run
here ran and passed its output check, 1 when any failed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import torch

from haic_kernels.bench import report, results, roofline, runner, suites
from haic_kernels.bench.env import collect_env

PROG = "haic bench"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Time kernel benchmark suites against their baselines (device time via CUDA "
        "events on a GPU, wall time on the CPU) and print a comparison table.",
    )
    p.add_argument("suites", nargs="*", help="suite names, or 'all' (see --list)")
    p.add_argument("--list", action="store_true", help="list the suites and exit")
    p.add_argument(
        "--size",
        choices=("tiny", "full", "all"),
        default=None,
        help="tiny: small shapes, seconds on a CPU; full: the real model's shapes "
        "(default: full on CUDA, tiny on the CPU)",
    )
    p.add_argument(
        "--backends",
        default=None,
        help="comma-separated backend labels to run, e.g. 'torch eager,triton' (default: all)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if any")
    p.add_argument("--reps", type=int, default=None, help="timed runs per case (100 CUDA, 20 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (10 CUDA, 3 CPU)")
    p.add_argument(
        "--cuda-graph",
        choices=("case", "on", "off"),
        default="case",
        help="time CUDA graph replays: as each case asks (default), always, or never",
    )
    p.add_argument("--no-peaks", action="store_true", help="skip measuring the device's peaks")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    p.add_argument("--plot", metavar="PATH", help="save a PNG bar chart here (needs matplotlib)")
    p.add_argument("--show", metavar="PATH", help="print the table of a saved JSON and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _error(msg: str) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["launches"]:  # a subcommand with its own options
        from haic_kernels.bench.launches import main as launches_main

        return launches_main(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): return, don't exit
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)

    if args.show:
        try:
            doc = results.read_json(args.show)
        except (OSError, ValueError) as exc:
            return _error(str(exc))
        print(
            report.format_table(
                doc["results"], skipped=doc["skipped"], failed=doc["failed"], peaks=doc["peaks"]
            )
        )
        return 0

    if args.list:
        for name in suites.names():
            print(f"{name:16s} {suites.describe(name)}")
        return 0

    if not args.suites:
        return _error(
            f"name at least one suite, or 'all'; known suites: {', '.join(suites.names())}"
        )
    try:
        names = suites.resolve(args.suites)
    except ValueError as exc:
        return _error(str(exc))

    if args.device == "cuda" and not torch.cuda.is_available():
        return _error("--device cuda: no CUDA device is available here")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    size = args.size or ("full" if cuda else "tiny")
    reps = args.reps if args.reps is not None else (100 if cuda else 20)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 3)
    if reps < 1 or warmup < 0:
        return _error("--reps must be >= 1 and --warmup >= 0")
    graph = {"case": None, "on": True, "off": False}[args.cuda_graph]
    if graph and not cuda:
        return _error("--cuda-graph on needs a CUDA device")

    all_cases = [c for n in names for c in suites.cases(n, size, device)]
    backends = [b for b in args.backends.split(",") if b.strip()] if args.backends else None
    try:
        todo = runner.filter_backends(all_cases, backends)
    except ValueError as exc:
        return _error(str(exc))

    peaks = None if args.no_peaks else roofline.measure_peaks(device)
    out = runner.run(
        todo,
        device,
        reps=reps,
        warmup=warmup,
        peaks=peaks,
        cuda_graph=graph,
        progress=not args.no_progress,
    )
    peaks_dict = peaks.to_dict() if peaks else None

    if args.json:
        doc = results.to_document(
            out.rows,
            collect_env(device),
            peaks=peaks_dict,
            skipped=out.skipped,
            failed=out.failed,
        )
        print(f"wrote {results.write_json(args.json, doc)}", file=sys.stderr)
    title = f"{PROG} {' '.join(names)} --size {size} on {_device_name(device)}"
    if args.plot and out.rows:
        try:
            path = report.plot(out.rows, args.plot, peaks=peaks_dict, title=title)
            print(f"wrote {path}", file=sys.stderr)
        except RuntimeError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            out.failed.append({"suite": "-", "case": "-", "backend": "plot", "reason": str(exc)})
    elif args.plot:
        print(f"{PROG}: no results to plot; {args.plot} not written", file=sys.stderr)

    print(
        report.format_table(
            out.rows, skipped=out.skipped, failed=out.failed, peaks=peaks_dict, title=title
        )
    )
    return 1 if out.failed else 0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu (wall time; triton rows are the interpreter, not kernel speed)"
    return "cpu (wall time)"


if __name__ == "__main__":
    sys.exit(main())
