"""The ``bnbench`` command."""

import argparse
import sys


def _info(args):
    from .sysinfo import system_info

    for key, value in system_info().items():
        print(f"{key:>16}: {value}")
    return 0


def _floats(text):
    return tuple(float(v) for v in text.split(","))


def _ints(text):
    return tuple(int(v) for v in text.split(","))


def _words(text):
    return tuple(v.strip() for v in text.split(","))


def _train(args):
    import json

    from tqdm import tqdm

    from .train import TrainConfig, run

    fields = {
        "dataset": args.dataset,
        "model": args.model,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "epochs": args.epochs,
        "steps": args.steps,
        "lr": args.lr,
        "num_samples": args.num_samples,
        "bn_momenta": args.momenta,
        "estimators": args.estimators,
        "test_batch_sizes": args.test_batch_sizes,
        "precise_samples": args.precise_samples,
        "precise_batch_sizes": args.precise_batch_sizes,
    }
    try:
        config = TrainConfig(**{k: v for k, v in fields.items() if v is not None})
    except ValueError as err:
        print(f"bnbench train: {err}", file=sys.stderr)
        return 2
    bar = tqdm(total=None, unit="step", disable=not sys.stderr.isatty(), leave=False)

    def progress(step, total, loss):
        bar.total = total
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")

    result = run(config, progress)
    bar.close()
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
    else:
        print(format_result(result))
    return 0


def format_result(result):
    """A readable table of one training run's evaluations."""
    from .train import costs

    t = result["training"]
    lines = [
        f"{result['config']['model']} on {result['config']['dataset']}, batch size "
        f"{result['config']['batch_size']}, seed {result['config']['seed']}: "
        f"{t['steps']} steps in {t['train_seconds']:.1f} s "
        f"({t['seconds_per_step'] * 1e3:.2f} ms/step), final train loss {t['final_train_loss']:.3f}",
        "",
        f"{'estimator':<14}{'setting':>18}{'test acc':>10}{'test loss':>10}"
        f"{'mean err':>10}{'var err':>10}",
    ]
    for e in result["evaluations"]:
        if e["momentum"] is not None:
            setting = f"momentum {e['momentum']:g}"
        elif e["precise_samples"] is not None:
            setting = f"{e['precise_samples']} x{e['precise_batch_size']}"
            if e["aggregation"] != "total_variance":
                setting += " fvcore"
        elif e["test_batch_size"] is not None:
            setting = f"{e['test_order']} batch {e['test_batch_size']}"
        else:
            setting = ""

        def num(v, fmt):
            return format(v, fmt) if v is not None else f"{'-':>10}"

        lines.append(
            f"{e['estimator']:<14}{setting:>18}{num(e['test_accuracy'], '10.4f')}"
            f"{num(e['test_loss'], '10.4f')}{num(e['mean_error'], '10.4f')}"
            f"{num(e['var_error'], '10.4f')}"
        )
    lines += ["", "extra seconds per estimator: " + ", ".join(
        f"{k} {v:.3f}" for k, v in costs(result).items())]  # fmt: skip
    return "\n".join(lines)


def _study(args):
    from . import study

    try:
        chosen = study.load(args.name)
        return study.run_from_args(chosen, args, command=args.command_line)
    except ValueError as err:
        print(f"bnbench study: {err}", file=sys.stderr)
        return 2


def _report(args):
    import json
    from pathlib import Path

    from . import study

    try:
        meta = json.loads((Path(args.folder) / "study.json").read_text())
        path = study.build_report(study.load(meta["study"]), args.folder, args.command_line)
    except (OSError, ValueError, KeyError) as err:
        print(f"bnbench report: cannot build a report from {args.folder}: {err}", file=sys.stderr)
        return 2
    print(f"report written to {path / 'report.md'}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="bnbench", description="Batch-norm kernels and test-time statistics benchmarks."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("info", help="versions, CPU, threads, Numba threading layer, CUDA")
    p.set_defaults(func=_info)

    p = sub.add_parser(
        "train",
        help="train one network and evaluate every test-time statistics estimator",
        description="Train one configuration; every estimator and EMA momentum rides along.",
    )
    p.add_argument("--dataset", default="mnist1d", help="mnist1d or gaussian_mixture")
    p.add_argument("--model", default="cnn", help="cnn or mlp")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="training epochs (default 40)")
    p.add_argument("--steps", type=int, help="training steps (overrides --epochs)")
    p.add_argument("--lr", type=float, help="learning rate at batch size 64 (default 0.05)")
    p.add_argument("--num-samples", type=int, help="dataset size (MNIST-1D default 5000)")
    p.add_argument("--momenta", type=_floats, help="EMA momenta, comma-separated")
    p.add_argument("--estimators", type=_words, help="comma-separated subset of estimators")
    p.add_argument("--test-batch-sizes", type=_ints, help="comma-separated test batch sizes")
    p.add_argument("--precise-samples", type=_ints, help="PreciseBN sample counts (default: all)")
    p.add_argument(
        "--precise-batch-sizes", type=_ints, help="PreciseBN batch sizes (default: training's)"
    )
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.set_defaults(func=_train)

    from . import study

    names = sorted(study.available())
    p = sub.add_parser(
        "study",
        help="run (or resume) a study and write its report",
        description="Run or resume a study, then write its report. Studies: "
        + (", ".join(names) or f"none found in {study.studies_dir()}"),
    )
    p.add_argument("name", metavar="NAME", help="one of: " + ", ".join(names))
    study.add_arguments(p)
    p.set_defaults(func=_study)

    p = sub.add_parser("report", help="rebuild a study's report from its saved runs")
    p.add_argument("folder", metavar="DIR", help="a study's output folder")
    p.set_defaults(func=_report)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = " ".join(["bnbench", *argv])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
