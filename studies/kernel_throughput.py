"""Kernel benchmark study: every batch-norm operation, backend and peer, in GB/s.

    python studies/kernel_throughput.py --out reports/kernel-throughput

writes report.md, throughput.png, results.csv and provenance.json into the folder.
"""

import argparse
import sys

from bnbench import report, throughput

PRESETS = {
    "quick": {"shapes": throughput.SHAPES[:4] + throughput.SHAPES[5:6], "budget_s": 0.3},
    "full": {"shapes": throughput.SHAPES, "budget_s": 1.5},
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports/kernel-throughput", help="report folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    df = throughput.measure(preset["shapes"], budget_s=preset["budget_s"], progress=print)
    out = report.write_report(
        args.out,
        "Batch-norm kernel throughput",
        throughput.report_body(df),
        df,
        figures=[("throughput.png", throughput.figure(df))],
        command=" ".join(sys.argv),
    )
    print(f"report written to {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
