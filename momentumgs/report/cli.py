"""`momentumgs report`: its sub-parser (the report's modules load only when the command runs)."""

from __future__ import annotations


def cmd_report(args) -> int:
    from momentumgs.report.build import write_report

    print(f"report: {write_report(args.run, args.out)}")
    return 0


def add_report_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write a run's report: one HTML page with curves, blocks, every test view and the scores",
    )
    p.add_argument("run", help="run folder")
    p.add_argument(
        "--out", help="report folder (default RUN/report; an earlier report there is replaced when complete)"
    )
    p.set_defaults(func=cmd_report)
