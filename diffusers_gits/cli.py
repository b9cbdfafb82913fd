"""Command line: `diffusers-gits demo` (more commands in later releases)."""

import argparse
import logging
import sys

from .solvers import SOLVERS


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffusers-gits", description="GITS time schedules for diffusers pipelines.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="calibrate GITS on the embedded model and compare it with today's schedules",
        description=(
            "Calibrate GITS on the embedded digits model (no network), then print RMSE to a reference solution for "
            "GITS and the baseline schedules at several NFE, and write a plot and sample grids.\n\n"
            "examples:\n  diffusers-gits demo\n  diffusers-gits demo --solver euler --output out/"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--solver", choices=sorted(SOLVERS), default="dpmpp_2m", help="sampler (default: dpmpp_2m)")
    demo.add_argument(
        "--output", default="demo_output", help="folder for PNGs and the scheduler (default: demo_output)"
    )
    demo.add_argument("--steps", type=_positive_int, nargs="+", default=[4, 5, 6, 8, 10], help="NFEs to compare")
    demo.add_argument("--num-warmup", type=_positive_int, default=256, help="calibration samples (default: 256)")
    demo.add_argument("--num-test", type=_positive_int, default=128, help="test noises (default: 128)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "demo":
            from .demo import run_demo

            run_demo(args.output, args.solver, tuple(args.steps), args.num_warmup, args.num_test)
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        if args.debug:
            raise
        print(f"diffusers-gits: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
