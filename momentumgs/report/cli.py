"""`momentumgs report`: its sub-parser (the report's modules load only when the command runs)."""

from __future__ import annotations


def write_and_announce(run_dir, out=None, device=None) -> None:
    """Write the run's report and print where it is (for `report`, and after `train` and `demo`)."""
    from momentumgs.report.build import write_report

    print(f"report: {write_report(run_dir, out, device)} (open it in a browser)")


def cmd_report(args) -> int:
    from momentumgs.run_setup import checked_device

    device = checked_device(args.device) if args.device is not None else None
    write_and_announce(args.run, args.out, device)
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
    p.add_argument(
        "--device", help="where to render: auto, cpu, cuda or cuda:N (default: the run's train.device)"
    )
    p.set_defaults(func=cmd_report)
