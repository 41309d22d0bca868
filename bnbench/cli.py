"""The ``bnbench`` command."""

import argparse
import sys


def _info(args):
    from .sysinfo import system_info

    for key, value in system_info().items():
        print(f"{key:>16}: {value}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="bnbench", description="Batch-norm kernels and test-time statistics benchmarks."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("info", help="versions, CPU, threads, Numba threading layer, CUDA")
    p.set_defaults(func=_info)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
