"""The ``bnbench`` command."""

import argparse
import sys


def _info(args):
    from .sysinfo import system_info

    for key, value in system_info().items():
        print(f"{key:>16}: {value}")
    return 0


def _list_of(kind):
    def parse(text):
        return tuple(kind(v.strip()) for v in text.split(",") if v.strip())

    parse.__name__ = f"comma-separated {kind.__name__}s"
    return parse


def _bool(text):
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise ValueError(text)


#: TrainConfig field -> help text for ``bnbench train`` (every field is an option)
TRAIN_HELP = {
    "dataset": "dataset",
    "model": "network",
    "batch_size": "training batch size",
    "epochs": "training epochs",
    "steps": "training steps (overrides --epochs)",
    "lr": "SGD learning rate at batch size 64 (scaled linearly with the batch size)",
    "max_lr": "cap on the scaled learning rate",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay on weights (not on biases or BN parameters)",
    "seed": "seed of initialisation and batch order",
    "num_samples": "dataset size (MNIST-1D: 80%% train, 20%% test)",
    "bn_momenta": "EMA momenta tracked at once (PyTorch convention)",
    "estimators": "estimators and adaptation modes to score",
    "unbiased": "feed running estimates the unbiased (Bessel) batch variance",
    "precise_samples": "PreciseBN sample counts (default: the whole training set)",
    "precise_batch_sizes": "PreciseBN recompute batch sizes (default: the training batch size)",
    "precise_aggregations": "PreciseBN variance aggregations",
    "test_batch_sizes": "test batch sizes of the modes that normalise test batches",
    "test_orders": "test batch orders",
    "corruptions": "corruptions (MNIST-1D-C or MNIST-C, by dataset) to score on, besides the "
    "clean test set",
    "severities": "corruption severities (1-5; 0 is the clean data)",
    "adapt_samples": "AdaBN sample counts besides the whole test set",
    "prior_strengths": "prior strengths N of the source/test-batch prior (Schneider et al.)",
    "online_momenta": "momenta of the online EMA adaptation",
    "depth": "BN layers of the resnet model (even, 2-64; resnet only)",
    "bn": "BN variant",
    "ghost_batch_size": "normalization batch size: ghost batches of this many samples (bn only)",
    "frozen_fraction": "train the last fraction of the steps with frozen population "
    "statistics (FrozenBN)",
    "batch_order": "training batch order",
    "classes_per_batch": "classes in each non_iid training batch",
    "score_train_set": "also score every estimator on the training set",
    "eval_every": "score every estimator during training too: every N steps (an integer) "
    "or at fractions of training (comma-separated, e.g. 0.25,0.5,0.75)",
    "streams": "test streams to score the stream methods on",
    "stream_batch_sizes": "test batch sizes of the streams",
    "stream_severity": "corruption severity of the streams (the gradual stream: 1-5-1)",
    "stream_examples": "test examples per test set in the streams",
    "dirichlet_alpha": "Dirichlet concentration of the class-correlated stream",
    "gradual_corruptions": "corruptions in the gradual stream",
    "tent_lrs": "TENT learning rates",
    "tent_modes": "TENT modes",
    "heldout_corruptions": "corruptions held out for choosing hyperparameters (default: the "
    "dataset's)",
}


def _steps_or_fractions(text):
    if "," in text or "." in text:
        return _list_of(float)(text)
    return int(text)


#: older spellings kept working
ALIASES = {"bn_momenta": ("--momenta",)}


def _train_choices():
    from . import corrupted, data, streams, tent, train
    from .nn import MODELS

    corruptions = sorted(
        {c for d in corrupted.CORRUPTED for c in corrupted.corruptions(d).CORRUPTIONS}
    )
    return {
        "dataset": sorted(data.DATASETS),
        "model": sorted(MODELS),
        "estimators": list(train.ESTIMATORS),
        "precise_aggregations": list(train.AGGREGATIONS),
        "test_orders": list(train.ORDERS),
        "corruptions": corruptions,
        "heldout_corruptions": corruptions,
        "bn": list(train.BN_VARIANTS),
        "batch_order": list(train.BATCH_ORDERS),
        "streams": list(streams.STREAMS),
        "tent_modes": list(tent.MODES),
    }


def _add_train_options(parser):
    """One option per TrainConfig field, typed from its default, with its choices."""
    import dataclasses

    from .train import TrainConfig

    choices = _train_choices()
    ints = {"batch_size", "epochs", "steps", "seed", "num_samples", "test_batch_sizes", "depth",
            "ghost_batch_size", "classes_per_batch", "precise_samples", "precise_batch_sizes",
            "adapt_samples", "severities", "stream_batch_sizes", "stream_severity",
            "stream_examples", "gradual_corruptions"}  # fmt: skip
    for field in dataclasses.fields(TrainConfig):
        name, default = field.name, field.default
        flags = ["--" + name.replace("_", "-"), *ALIASES.get(name, ())]
        number = int if name in ints else float
        help_text = f"{TRAIN_HELP[name]}; default {default!r}"
        if name == "eval_every":
            parser.add_argument(*flags, type=_steps_or_fractions, help=help_text)
        elif isinstance(default, tuple):  # lists: a choice of names, or numbers
            if name in choices:
                help_text += f" (comma-separated, of: {', '.join(choices[name])})"
            parser.add_argument(*flags, type=_list_of(str if name in choices else number),
                                help=help_text)  # fmt: skip
        elif isinstance(default, bool):
            parser.add_argument(*flags, type=_bool, metavar="{true,false}", help=help_text)
        elif name in choices:
            parser.add_argument(*flags, choices=choices[name], help=help_text)
        else:
            parser.add_argument(*flags, type=number, help=help_text)


def _train(args):
    import dataclasses
    import json

    from tqdm import tqdm

    from .train import TrainConfig, run

    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    try:
        config = TrainConfig(**{k: v for k, v in fields.items() if v is not None})
    except (TypeError, ValueError) as err:
        print(f"bnbench train: {err}", file=sys.stderr)
        return 2
    bar = tqdm(total=None, unit="step", disable=not sys.stderr.isatty(), leave=False)

    def progress(step, total, loss):
        bar.total = total
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")

    try:
        result = run(config, progress)
    except ValueError as err:
        print(f"bnbench train: {err}", file=sys.stderr)
        return 2
    finally:
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
        f"{'test set':<22}{'estimator':<14}{'setting':>24}{'test acc':>10}{'NLL':>10}"
        f"{'ECE':>10}{'mean err':>10}{'var err':>10}",
    ]
    for e in result["evaluations"]:
        parts = []
        if e["momentum"] is not None:
            parts.append(f"m={e['momentum']:g}")
        if e["prior_strength"] is not None:
            parts.append(f"N={e['prior_strength']:g}")
        if e["precise_samples"] is not None:
            parts.append(
                f"{e['precise_samples_used'] or e['precise_samples']}x{e['precise_batch_size']}"
            )
            if e["aggregation"] != "total_variance":
                parts.append("mean-of-vars")
        if e["adapt_samples"] is not None:
            parts.append(f"{e['adapt_samples']} samples")
        if e["test_batch_size"] is not None:
            parts.append(f"{e['test_order']} batch {e['test_batch_size']}")
        setting = " ".join(parts)
        where = "clean" if e["corruption"] == "none" else f"{e['corruption']} s{e['severity']}"
        if e["step"] != t["steps"]:  # a checkpoint during training
            where = f"step {e['step']}: {where}"

        def num(v, fmt):
            return format(v, fmt) if v is not None else f"{'-':>10}"

        lines.append(
            f"{where:<22}{e['estimator']:<14}{setting:>24}{num(e['test_accuracy'], '10.4f')}"
            f"{num(e['test_nll'], '10.4f')}{num(e['test_ece'], '10.4f')}"
            f"{num(e['mean_error'], '10.4f')}{num(e['var_error'], '10.4f')}"
        )
    lines += ["", "extra seconds per estimator: " + ", ".join(
        f"{k} {v:.3f}" for k, v in costs(result).items())]  # fmt: skip
    return "\n".join(lines)


def _study(args):
    from . import study

    def go(args):
        if args.name == "all":
            return study.run_all(args, command=args.command_line)
        return study.run_from_args(study.load(args.name), args, command=args.command_line)

    return study.guarded("bnbench study", go, args)


def _report(args):
    import json
    from pathlib import Path

    from . import study

    def go(args):
        try:
            meta = json.loads((Path(args.folder) / "study.json").read_text())
            chosen = study.load(meta["study"])
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"cannot build a report from {args.folder}: {err}") from err
        try:
            path = study.build_report(chosen, args.folder, args.command_line)
        except OSError as err:
            raise study.report_failed(Path(args.folder), err, "the runs are kept") from None
        print(f"report written to {path / 'report.md'}")
        return 0

    return study.guarded("bnbench report", go, args)


def _diagnose(args):
    from . import study

    def go(args):
        try:
            from .torch import diagnosis
        except ImportError as err:
            raise ValueError(
                f"diagnose needs PyTorch: pip install 'bnbench[torch]' ({err})"
            ) from err
        result = diagnosis.main_from_factories(args.model, args.data, out=args.out,
                                               batch_size=args.batch_size, seed=args.seed)  # fmt: skip
        print(diagnosis.format_table(result))
        if args.out:
            print(f"report written to {args.out}/report.md")
        return 0

    return study.guarded("bnbench diagnose", go, args)


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
    _add_train_options(p)
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.set_defaults(func=_train)

    from . import study

    names = sorted(study.available())
    p = sub.add_parser(
        "study",
        help="run (or resume) a study and write its report",
        description="Run or resume a study, then write its report. Studies: "
        + (", ".join(names) or f"none found in {study.studies_dir()}"),
        epilog=study.EXIT_STATUS,
    )
    p.add_argument("name", metavar="NAME",
                   help="one of: " + ", ".join(names) + "; or 'all': every study, then "
                   "reports/index.html with the answer page")  # fmt: skip
    study.add_arguments(p)
    p.set_defaults(func=_study)

    p = sub.add_parser(
        "diagnose",
        help="is a PyTorch model's eval-mode gap its BN statistics, and which estimate fixes it",
        description="Score a trained PyTorch model's own BN buffers, the exact population "
        "statistics, PreciseBN and prediction-time BN on its data, and recommend an estimate.",
    )
    p.add_argument("--model", required=True, metavar="PKG.MOD:FACTORY",
                   help="a factory returning the trained torch.nn.Module")  # fmt: skip
    p.add_argument("--data", required=True, metavar="PKG.MOD:FACTORY",
                   help="a factory returning (x_train, y_train, x_test, y_test)")  # fmt: skip
    p.add_argument("--out", default=None, help="write a report folder here")
    p.add_argument("--batch-size", type=int, default=128, help="loader batch size (default 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of shuffling and bootstrap")
    p.add_argument("--debug", action="store_true", help="show a traceback on errors")
    p.set_defaults(func=_diagnose)

    p = sub.add_parser("report", help="rebuild a study's report from its saved runs")
    p.add_argument("folder", metavar="DIR", help="a study's output folder")
    p.add_argument("--debug", action="store_true", help="show a traceback on errors")
    p.set_defaults(func=_report)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = " ".join(["bnbench", *argv])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
