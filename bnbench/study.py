"""Studies: a named grid of jobs per preset, a sweep, and an analysis into a report.

A study script (``studies/<name>.py``) defines one :class:`Study` called ``STUDY`` and ends
with ``sys.exit(main(STUDY))``; ``bnbench study NAME`` finds the same object by name. The
library holds no study-specific code: the studies folder is found through
``$BNBENCH_STUDIES_DIR``, next to the package (a checkout or editable install), or as the
``bnbench_studies`` package that a regular ``pip install`` puts beside ``bnbench``.

A study's output folder (default ``reports/<name>-<preset>``) belongs to one study and
one preset: it holds ``runs/`` (one JSON record per job, the cache that makes re-runs
resume), ``study.json`` (name and preset) and the report files. A run into a folder of
another study or preset is refused, and a report is built only from the runs of its own
preset's grid, so a report never mixes presets.
"""

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import report, sweep


@dataclass
class Study:
    """``presets``: name -> function returning the job list: with no argument, or, for
    a study that declares ``arguments``, with the dict of its options.
    ``analyse(df)`` -> ``(markdown body, [(png name, figure), ...])``.
    ``max_jobs``: a cap on parallel jobs (1 for studies that time things).
    ``arguments(parser)``: adds the study's own command-line options to an
    ``argparse`` parser (e.g. ``--model package.module:factory``); their values (defaults
    filled in) reach the preset functions, are recorded in the output folder's
    ``study.json`` and so rebuild the same report."""

    name: str
    title: str
    presets: dict[str, Callable[..., list]]
    analyse: Callable
    description: str = ""
    max_jobs: int | None = None
    default_preset: str = "quick"
    arguments: Callable | None = None

    def options(self, given=None):
        """The study's options: its declared defaults updated with ``given`` (a dict, or
        an ``argparse.Namespace`` from which the study's options are read); ``{}`` for
        a study without ``arguments``."""
        if self.arguments is None:
            return {}
        parser = argparse.ArgumentParser(add_help=False)
        self.arguments(parser)
        defaults = vars(parser.parse_args([]))
        if isinstance(given, argparse.Namespace):
            given = {k: getattr(given, k) for k in defaults if hasattr(given, k)}
        given = dict(given or {})
        unknown = set(given) - set(defaults)
        if unknown:
            raise ValueError(
                f"study {self.name!r} has no option(s) {sorted(unknown)}; "
                f"its options are {sorted(defaults)}"
            )
        return {**defaults, **given}

    def jobs(self, preset, options=None):
        if preset not in self.presets:
            raise ValueError(
                f"preset must be one of {sorted(self.presets)} for study {self.name!r}, "
                f"got {preset!r}"
            )
        if self.arguments is None:
            jobs = self.presets[preset]()
        else:
            jobs = self.presets[preset](self.options(options))
        if not jobs:
            raise ValueError(f"study {self.name!r}, preset {preset!r}: the grid is empty")
        return jobs


def studies_dir():
    """``$BNBENCH_STUDIES_DIR``, else ``studies/`` beside the package (a checkout), else
    the installed ``bnbench_studies`` package."""
    if path := os.environ.get("BNBENCH_STUDIES_DIR"):
        return Path(path)
    beside = Path(__file__).resolve().parent.parent / "studies"
    if beside.is_dir():
        return beside
    spec = importlib.util.find_spec("bnbench_studies")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return beside


def available():
    """Study name -> script path for every study script found."""
    folder = studies_dir()
    if not folder.is_dir():
        return {}
    scripts = sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))
    return {p.stem.replace("_", "-"): p for p in scripts}


def load(name):
    """The ``STUDY`` object of study ``name`` (e.g. ``"momentum-batch-size"``)."""
    scripts = available()
    if name not in scripts:
        where = studies_dir()
        raise ValueError(
            f"study must be one of {sorted(scripts)} (scripts in {where}), got {name!r}"
        )
    spec = importlib.util.spec_from_file_location(f"bnbench_study_{name}", scripts[name])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.STUDY


def _check_writable(out):
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"out must be a writable folder, got {str(out)!r} ({err})") from err
    return out


def default_out(study, preset):
    """The default output folder: one per study and preset."""
    return Path("reports") / f"{study.name}-{preset}"


def _read_meta(out):
    try:
        return json.loads((Path(out) / "study.json").read_text())
    except (OSError, ValueError):
        return {}


def _claim(study, preset, out, n_jobs, options=None):
    """Mark ``out`` as this study's and preset's folder (and options, for a study that
    declares some), refusing one that holds another study's, preset's or options' runs."""
    meta = _read_meta(out)
    theirs = (meta.get("study"), meta.get("preset"))
    if meta and theirs != (study.name, preset):
        raise ValueError(
            f"out folder {str(out)!r} holds runs of study {theirs[0]!r}, preset {theirs[1]!r}: "
            f"a report never mixes presets; choose another --out for {study.name!r}, preset "
            f"{preset!r} (the default is {str(default_out(study, preset))!r})"
        )
    if meta and meta.get("options", {}) != (options or {}):
        raise ValueError(
            f"out folder {str(out)!r} holds runs of study {study.name!r} with options "
            f"{meta.get('options', {})}, not {options}: choose another --out"
        )
    meta = {"study": study.name, "preset": preset, "jobs": n_jobs}
    if options:
        meta["options"] = options
    (out / "study.json").write_text(json.dumps(meta, indent=2) + "\n")


def runs_provenance(records):
    """Per-run provenance summarised: each field's distinct values with their run counts,
    and sentences for the fields on which the runs disagree."""
    fields = ("git_commit", "git_dirty", "code", "host", "cpu", "threads", "versions")
    summary, notes = {}, []
    for field in fields:
        counts = {}
        for r in records:
            value = json.dumps(r.get("provenance", {}).get(field), sort_keys=True)
            counts[value] = counts.get(value, 0) + 1
        summary[field] = [{"value": json.loads(v), "runs": n} for v, n in counts.items()]
        if len(counts) > 1:
            what = {"git_commit": "commits", "git_dirty": "work-tree states (clean/dirty)",
                    "code": "versions of the bnbench source", "host": "hosts", "cpu": "CPUs",
                    "threads": "thread counts", "versions": "sets of library versions"}[field]  # fmt: skip
            values = ", ".join(f"{json.loads(v)} ({n})" for v, n in counts.items())
            notes.append(f"runs from {len(counts)} {what}: {values}")
    dirty = sum(r.get("provenance", {}).get("git_dirty") is True for r in records)
    if dirty and not any("dirty" in n for n in notes):
        notes.append(f"all {dirty} runs came from a work tree with uncommitted changes")
    return summary, notes


def build_report(study, out, command=None):
    """(Re)build the report of ``study`` in ``out`` from the saved runs of the preset
    recorded in ``out/study.json`` (runs outside that preset's grid are ignored)."""
    out = Path(out)
    meta = _read_meta(out)
    preset = meta.get("preset", study.default_preset)
    options = meta.get("options")
    jobs = study.jobs(preset, options)
    records = sweep.latest(out / "runs", jobs)
    if not records:
        raise ValueError(
            f"no finished runs of preset {preset!r} in {out / 'runs'}: nothing to report"
        )
    df = sweep.table(records)
    body, figures = study.analyse(df)
    failed = sweep.failures(out / "runs", jobs)
    if failed:
        body += f"\n\n## Failed runs\n\n{len(failed)} run(s) failed; their errors are in runs/."
    notes = f"Preset `{preset}`: {len(records)} finished run(s)"
    if options:
        notes += (
            " (options: "
            + ", ".join(f"`--{k.replace('_', '-')} {v}`" for k, v in options.items())
            + ")"
        )
    if len(records) < len(jobs):
        notes += f" of {len(jobs)} (a partial study: re-run the same command to resume)"
    summary, disagreements = runs_provenance(records)
    if disagreements:
        notes += ". Note: " + "; ".join(disagreements)
    body = f"{notes}.\n\n{body}"
    return report.write_report(
        out, study.title, body, df, figures, command=command,
        extra_provenance={"study": study.name, "preset": preset, "options": options or {},
                          "runs": summary, "runs_disagree": disagreements},
    )  # fmt: skip


def run(study, preset, out, n_jobs=None, scheduler=None, command=None, progress=True,
        options=None):  # fmt: skip
    """Run (or resume) ``study`` with ``preset`` (and ``options``, for a study that
    declares ``arguments``) into ``out``; returns the number of failed runs (0 on
    success)."""
    options = study.options(options)
    jobs = study.jobs(preset, options)
    out = _check_writable(out)
    if study.max_jobs is not None:
        n_jobs = min(n_jobs or study.max_jobs, study.max_jobs)
    _claim(study, preset, out, len(jobs), options)
    meta = {"study": study.name, "preset": preset}
    done, failed, skipped = sweep.run(jobs, out / "runs", n_jobs, scheduler, progress, meta)
    print(f"{study.name}: {done} run(s) done, {skipped} already done, {failed} failed")
    path = build_report(study, out, command)
    print(f"report written to {path / 'report.md'}")
    return failed


#: How a study command ends, for ``--help`` and the README.
EXIT_STATUS = (
    "Exit status: 0 when every run finished; 2 for bad arguments (unknown study or preset, "
    "empty grid, unwritable or foreign output folder); otherwise the number of failed runs, "
    "capped at 100 (so 2 can also mean two failed runs: their errors are in OUT/runs/)."
)


def add_arguments(parser):
    parser.add_argument("--preset", default=None, help="quick or full (default: the study's)")
    parser.add_argument("--out", default=None, help="output folder (default reports/NAME-PRESET)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel runs (default: cores)")
    parser.add_argument(
        "--scheduler", default=None, help="Dask scheduler address, or 'local' for a LocalCluster"
    )
    parser.add_argument(
        "-o", "--option", action="append", default=[], metavar="NAME=VALUE",
        help="one of the study's own options (its script's --help lists them), e.g. "
        "-o model=package.module:factory; repeatable",
    )  # fmt: skip


def parse_option_pairs(study, pairs):
    """The study's options from ``NAME=VALUE`` strings (the generic ``--option``, so
    that ``bnbench study NAME`` reaches options only the study knows), parsed by the
    study's own ``arguments`` (types and choices apply)."""
    if not pairs:
        return {}
    if study.arguments is None:
        raise ValueError(f"study {study.name!r} has no options of its own, got --option {pairs}")
    argv = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not (sep and name):
            raise ValueError(f"--option must be NAME=VALUE, got {pair!r}")
        argv += [f"--{name.replace('_', '-')}", value]
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    study.arguments(parser)
    try:
        known, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise ValueError(f"study {study.name!r}: {err}") from err
    if unknown:
        raise ValueError(
            f"study {study.name!r} has no option(s) {unknown[::2]}; its options are "
            f"{sorted(study.options())}"
        )
    named = {name.partition("=")[0].replace("-", "_") for name in pairs}
    return {k: v for k, v in vars(known).items() if k in named}


def run_from_args(study, args, command=None):
    preset = args.preset or study.default_preset
    out = args.out or default_out(study, preset)
    options = {**study.options(args), **parse_option_pairs(study, getattr(args, "option", []))}
    failed = run(study, preset, out, args.jobs, args.scheduler, command or " ".join(sys.argv),
                 options=options)  # fmt: skip
    if failed:
        print(f"{failed} run(s) failed; see {out}/runs", file=sys.stderr)
    return min(failed, 100)


def main(study, argv=None):
    """Entry point of a study script: ``python studies/<name>.py [--preset ...]``."""
    parser = argparse.ArgumentParser(description=study.title, epilog=EXIT_STATUS)
    add_arguments(parser)
    if study.arguments is not None:
        study.arguments(parser.add_argument_group(f"{study.name} options"))
    args = parser.parse_args(argv)
    try:
        return run_from_args(study, args)
    except ValueError as err:
        print(f"{study.name}: {err}", file=sys.stderr)
        return 2
