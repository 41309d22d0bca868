"""Kernel benchmark study: every batch-norm operation, backend and peer, in GB/s.

One job per shape (run one at a time: it times things). PyTorch joins as a peer when
installed.

    python studies/kernel_throughput.py --preset full --out reports/kernel-throughput
"""

import sys

from bnbench import throughput
from bnbench.study import Study, main


def jobs(shapes, budget_s):
    return [{"kind": "kernel", "params": {"shape": list(s), "budget_s": budget_s}} for s in shapes]


def analyse(df):
    order = {"x".join(map(str, s)): i for i, s in enumerate(throughput.SHAPES)}
    df = df.assign(_o=df["shape"].map(order).fillna(len(order)))
    df = df.sort_values("_o", kind="stable").drop(columns="_o")
    df["preallocated_out"] = df["preallocated_out"].astype(bool)
    df["triad_interleaved"] = df["triad_interleaved"].astype(bool)
    return throughput.report_body(df), [("throughput.png", throughput.figure(df))]


STUDY = Study(
    name="kernel-throughput",
    title="Batch-norm kernel throughput",
    presets={
        "quick": lambda: jobs(throughput.SHAPES[:6], budget_s=0.3),
        "full": lambda: jobs(throughput.SHAPES, budget_s=1.5),
    },
    analyse=analyse,
    max_jobs=1,
    default_preset="full",
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
