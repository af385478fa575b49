"""``python -m pytest_kvcache report A.json [B.json ...]``: re-render saved reports side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import ConfigError
from .export import load_report, side_by_side, to_csv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_kvcache",
                                     description="Work with saved pytest-kvcache JSON reports.")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="print saved reports side by side; write CSV and plots")
    rep.add_argument("reports", nargs="+", help="JSON reports written by --kv-report")
    rep.add_argument("--label", action="append", help="name for each report, in order (default: file name)")
    rep.add_argument("--csv", help="write the per-scenario summary of every report to this CSV file")
    rep.add_argument("--plots", help="write PNG plots and an index.html into this directory")
    args = parser.parse_args(argv)
    try:
        reports = [load_report(p) for p in args.reports]
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for report, label in zip(reports, args.label or []):
        report["label"] = label
    print(side_by_side(reports))
    if args.csv:
        Path(args.csv).write_text(to_csv(reports))
        print(f"\nCSV: {args.csv}")
    if args.plots:
        from .plots import plots_available, render_plots

        missing = plots_available()
        if missing:
            print(f"\nno plots: {missing}", file=sys.stderr)
        else:
            print(f"\nplots: {render_plots(reports, Path(args.plots))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
