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
import errno
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
    a study that declares options (``arguments`` or ``datasets``), with the dict of its
    options. ``analyse(df)`` -> ``(markdown body, [(png name, figure), ...], findings)``
    (:mod:`bnbench.findings`; an analysis may return only the first two).
    ``max_jobs``: a cap on parallel jobs (1 for studies that time things).
    ``arguments(parser)``: adds the study's own command-line options to an
    ``argparse`` parser (e.g. ``--model package.module:factory``); their values (defaults
    filled in) reach the preset functions, are recorded in the output folder's
    ``study.json`` and so rebuild the same report. ``datasets``: the datasets the study
    runs on (``--dataset``, default the first); the default output folder names any
    other, and the first is not recorded, so folders from before the option stay valid."""

    name: str
    title: str
    presets: dict[str, Callable[..., list]]
    analyse: Callable
    description: str = ""
    max_jobs: int | None = None
    default_preset: str = "quick"
    arguments: Callable | None = None
    datasets: tuple = ()

    @property
    def has_options(self):
        return self.arguments is not None or bool(self.datasets)

    def add_options(self, parser):
        """Add the study's options (``--dataset``, then its own ``arguments``)."""
        if self.datasets:
            parser.add_argument("--dataset", choices=self.datasets, default=self.datasets[0],
                                help=f"dataset (default {self.datasets[0]})")  # fmt: skip
        if self.arguments is not None:
            self.arguments(parser)

    def options(self, given=None):
        """The study's options: its declared defaults updated with ``given`` (a dict, or
        an ``argparse.Namespace`` from which the study's options are read); ``{}`` for
        a study without options."""
        if not self.has_options:
            return {}
        parser = argparse.ArgumentParser(add_help=False)
        self.add_options(parser)
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
        if self.datasets and given.get("dataset", self.datasets[0]) not in self.datasets:
            raise ValueError(f"dataset must be one of {list(self.datasets)} for study "
                             f"{self.name!r}, got {given['dataset']!r}")  # fmt: skip
        return {**defaults, **given}

    def recorded(self, options):
        """``options`` as ``study.json`` records them: the default dataset left out."""
        options = dict(options or {})
        if self.datasets and options.get("dataset") == self.datasets[0]:
            del options["dataset"]
        return options

    def jobs(self, preset, options=None):
        if preset not in self.presets:
            raise ValueError(
                f"preset must be one of {sorted(self.presets)} for study {self.name!r}, "
                f"got {preset!r}"
            )
        if not self.has_options:
            jobs = self.presets[preset]()
        else:
            jobs = self.presets[preset](self.options(options))
        if not jobs:
            raise ValueError(f"study {self.name!r}, preset {preset!r}: the grid is empty")
        return jobs


def presets_by_dataset(jobs, table):
    """Preset functions for a study with ``datasets``: ``table`` is ``{dataset: {preset:
    keyword arguments}}`` and preset ``p`` calls ``jobs(options, **table[dataset][p])``
    (the grid is sized per dataset: an MNIST network costs more than an MNIST-1D one)."""
    names = {p for sizes in table.values() for p in sizes}

    def preset(name):
        return lambda options: jobs(options, **table[options["dataset"]][name])

    return {name: preset(name) for name in sorted(names)}


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


def default_out(study, preset, options=None):
    """The default output folder: one per study, dataset (when not the study's first)
    and preset."""
    dataset = study.recorded(options).get("dataset")
    return Path("reports") / (f"{study.name}-{dataset}-{preset}" if dataset else
                              f"{study.name}-{preset}")  # fmt: skip


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
    options = study.recorded(options)
    if meta and meta.get("options", {}) != options:
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


def stale_runs(records):
    """Sentences for the runs computed by another bnbench source or other library
    versions than the environment building the report (their numbers may differ)."""
    code, versions = sweep.code_hash(), sweep.library_versions()
    notes = []
    other_code = sum(r.get("provenance", {}).get("code") != code for r in records)
    if other_code:
        notes.append(f"{other_code} of {len(records)} runs were computed by another version of "
                     f"the bnbench source than this report's ({code})")  # fmt: skip
    other = sum(r.get("provenance", {}).get("versions") != versions for r in records)
    if other:
        notes.append(f"{other} of {len(records)} runs were computed with other library "
                     f"versions than this report's ({versions})")  # fmt: skip
    return notes


def analysed(study, df):
    """``(body, figures, findings)`` of the study's analysis (``findings`` may be
    missing from an analysis that returns only body and figures: then ``[]``)."""
    out = study.analyse(df)
    body, figures, *rest = out
    return body, figures, (rest[0] if rest else [])


def build_report(study, out, command=None):
    """(Re)build the report of ``study`` in ``out`` from the saved runs of the preset
    recorded in ``out/study.json`` (runs outside that preset's grid are ignored).

    Each experiment is reported by its newest attempt: one whose newest attempt failed
    is listed under "Failed runs", never reported with an older attempt's numbers. The
    first line of the report says how many runs finished, flags runs computed by
    another code or library version than this environment's and names record files
    that cannot be read. The findings the analysis returns are written as
    ``findings.json`` (:mod:`bnbench.findings`)."""
    from . import findings as fnd

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
    body, figures, found = analysed(study, df)
    failed = sweep.failures(out / "runs", jobs)
    if failed:
        body += (f"\n\n## Failed runs\n\n{len(failed)} run(s) failed (their newest attempt); "
                 "their errors are in runs/:\n\n" + "\n".join(
                     f"- `{_brief(job)}`: {_last_line(error)}" for job, error in failed))  # fmt: skip
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
    flags = disagreements + stale_runs(records)
    bad = sweep.unreadable(out / "runs")
    if bad:
        flags.append(f"{len(bad)} run record(s) cannot be read and count as not done: "
                     + ", ".join(p.name for p in bad))  # fmt: skip
    if flags:
        notes += ". Note: " + "; ".join(flags)
    body = f"{notes}.\n\n{body}"
    extra = {"study": study.name, "preset": preset, "options": options or {}, "runs": summary,
             "runs_disagree": flags}  # fmt: skip
    texts = {"findings.json": fnd.to_json(found, study=study.name, preset=preset,
                                          options=options or {}, title=study.title)}  # fmt: skip
    return report.write_report(out, study.title, body, df, figures, command=command,
                               extra_provenance=extra, texts=texts)  # fmt: skip


def _brief(job):
    params = job.get("params", {})
    return ", ".join(f"{k}={v}" for k, v in params.items() if not isinstance(v, (list, dict)))[
        :160
    ]


def _last_line(error):
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no error text)"


class StudyStopped(Exception):
    """A study that stopped before the end: ``status`` is its exit status, ``message``
    the one line that says what happened, what was kept and what to do."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


def run(study, preset, out, n_jobs=None, scheduler=None, command=None, progress=True,
        options=None):  # fmt: skip
    """Run (or resume) ``study`` with ``preset`` (and ``options``, for a study that
    declares ``arguments``) into ``out``; returns the number of failed runs (0 on
    success). A sweep stopped by Ctrl-C or a full disk writes a report from what
    finished (where the disk allows) and raises :class:`StudyStopped`."""
    options = study.options(options)
    jobs = study.jobs(preset, options)
    out = _check_writable(out)
    if study.max_jobs is not None:
        n_jobs = min(n_jobs or study.max_jobs, study.max_jobs)
    _claim(study, preset, out, len(jobs), options)
    meta = {"study": study.name, "preset": preset}
    try:
        done, failed, skipped = sweep.run(jobs, out / "runs", n_jobs, scheduler, progress, meta)
    except sweep.SweepStopped as stop:
        raise _stopped(study, out, command, stop) from None
    print(f"{study.name}: {done} run(s) done, {skipped} already done, {failed} failed")
    try:
        path = build_report(study, out, command)
    except OSError as err:
        raise report_failed(out, err, f"all {len(jobs)} runs are saved") from None
    print(f"report written to {path / 'report.md'}")
    return failed


def report_failed(out, err, kept):
    what = "the disk is full" if err.errno == errno.ENOSPC else f"it cannot be written ({err})"
    return StudyStopped(
        f"the report in {out} could not be written: {what}; {kept} in {out / 'runs'}: free "
        f"space and run `bnbench report {out}` (or re-run the same command)",
        EXIT_FAULT,
    )


def _stopped(study, out, command, stop):
    """The :class:`StudyStopped` of a stopped sweep, after writing a partial report
    where possible."""
    kept = f"{stop.saved} of {stop.total} runs saved"
    if stop.reason == "interrupted":
        tail = "re-run the same command to resume"
        status = EXIT_INTERRUPTED
    else:
        what = "the disk is full" if stop.reason == "disk full" else "runs/ cannot be written"
        return StudyStopped(f"stopped: {what} ({stop.detail}); {kept} in {out / 'runs'}: "
                            "free space and re-run the same command to resume", EXIT_FAULT)  # fmt: skip
    try:
        path = build_report(study, out, command)
        where = f"a partial report is in {path / 'report.md'}"
    except ValueError:
        where = "no run had finished, so no report"
    except OSError as err:
        raise report_failed(out, err, kept) from None
    return StudyStopped(f"interrupted: {kept} in {out / 'runs'}, {where}; {tail}", status)


#: exit statuses of a study command
EXIT_FAILED_RUNS, EXIT_BAD_ARGUMENT, EXIT_FAULT, EXIT_INTERRUPTED = 1, 2, 3, 130

#: How a study command ends, for ``--help`` and the README.
EXIT_STATUS = (
    "Exit status: 0 when every run finished; 1 when some runs failed (their errors are in "
    "OUT/runs/ and the report's 'Failed runs' section); 2 for a bad argument (unknown study "
    "or preset, empty grid, unwritable or foreign output folder, unreachable scheduler); 3 "
    "when the disk filled up or the output could not be written (finished runs are kept: "
    "free space and re-run); 130 when interrupted (Ctrl-C: finished runs are kept and a "
    "partial report is written; re-run the same command to resume). Set BNBENCH_DEBUG=1 "
    "(or pass --debug) for a traceback."
)


def add_arguments(parser):
    parser.add_argument("--preset", default=None, help="quick or full (default: the study's)")
    parser.add_argument("--out", default=None, help="output folder (default reports/NAME-PRESET)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel runs (default: cores)")
    parser.add_argument(
        "--scheduler", default=None, help="Dask scheduler address, or 'local' for a LocalCluster"
    )
    parser.add_argument("--dataset", default=None,
                        help="the dataset, for studies that run on several (default: the study's)")  # fmt: skip
    parser.add_argument("--debug", action="store_true",
                        help="show a traceback on errors (also: BNBENCH_DEBUG=1)")  # fmt: skip
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
    if not study.has_options:
        raise ValueError(f"study {study.name!r} has no options of its own, got --option {pairs}")
    argv = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not (sep and name):
            raise ValueError(f"--option must be NAME=VALUE, got {pair!r}")
        argv += [f"--{name.replace('_', '-')}", value]
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    study.add_options(parser)
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
    """Run a study from parsed command-line ``args``; returns the exit status
    (:data:`EXIT_STATUS`), raising only :class:`StudyStopped` and ``ValueError``."""
    preset = args.preset or study.default_preset
    given = {k: v for k, v in vars(args).items() if not (k == "dataset" and v is None)}
    if given.get("dataset") and not study.datasets:
        raise ValueError(f"study {study.name!r} runs on one dataset only: no --dataset")
    options = {**study.options(given_options(study, given)),
               **parse_option_pairs(study, getattr(args, "option", []))}  # fmt: skip
    out = args.out or default_out(study, preset, options)
    failed = run(study, preset, out, args.jobs, args.scheduler, command or " ".join(sys.argv),
                 options=options)  # fmt: skip
    if failed:
        print(f"{failed} run(s) failed; their errors are in {out}/runs and the report",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED_RUNS
    return 0


def run_all(args, command=None):
    """``bnbench study all``: every study (on each of its datasets) with ``args.preset``
    into its default folder, then ``reports/index.md``/``index.html`` with the answer
    page (:mod:`bnbench.answer`). A study that cannot run here because an optional extra
    is missing (its ``ValueError`` raised from an ``ImportError``: PyTorch for rank-merging
    and torch-estimators) is skipped with one line, and again in the summary at the end,
    without changing the exit status; returns the worst exit status of the studies (a
    genuine bad argument is still :data:`EXIT_BAD_ARGUMENT`)."""
    from . import answer

    worst, skipped = 0, []
    for name in available():
        chosen = load(name)
        for dataset in chosen.datasets or (None,):
            label = name + (f" --dataset {dataset}" if dataset else "")
            print(f"== bnbench study {label} --preset {args.preset or chosen.default_preset}",
                  flush=True)  # fmt: skip
            values = {**vars(args), "name": name, "dataset": dataset, "out": None, "option": []}
            try:
                status = run_from_args(chosen, argparse.Namespace(**values), command)
            except ValueError as err:
                if isinstance(err.__cause__, ImportError):  # an optional extra is missing
                    print(f"{label}: skipped: {err}", file=sys.stderr, flush=True)
                    skipped.append(f"{label}: {err}")
                    status = 0
                else:
                    print(f"{label}: {err}", file=sys.stderr, flush=True)
                    status = EXIT_BAD_ARGUMENT
            worst = max(worst, status)
    path = answer.write_index(Path("reports"))
    print(f"answer page and gallery written to {path} and {path.with_suffix('.html')}")
    for line in skipped:
        print(f"skipped (an optional extra is missing): {line}")
    return worst


def given_options(study, values):
    """The study's options among ``values`` (a dict of parsed command-line values)."""
    known = set(study.options()) if study.has_options else set()
    return {k: v for k, v in values.items() if k in known}


def debugging(args=None):
    """Whether a traceback was asked for (``--debug`` or ``BNBENCH_DEBUG=1``)."""
    return bool(getattr(args, "debug", False)) or os.environ.get("BNBENCH_DEBUG", "") not in (
        "", "0",
    )  # fmt: skip


def guarded(name, fn, args):
    """``fn(args)`` with every expected fault turned into one line on stderr and its
    exit status (:data:`EXIT_STATUS`); a traceback only when :func:`debugging`."""
    try:
        return fn(args)
    except StudyStopped as stop:
        if debugging(args):
            raise
        print(f"{name}: {stop}", file=sys.stderr)
        return stop.status
    except ValueError as err:
        if debugging(args):
            raise
        print(f"{name}: {err}", file=sys.stderr)
        return EXIT_BAD_ARGUMENT
    except KeyboardInterrupt:
        if debugging(args):
            raise
        print(f"{name}: interrupted; every finished run is kept in the output folder's runs/: "
              "re-run the same command to resume", file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    except OSError as err:
        if debugging(args):
            raise
        what = "the disk is full" if err.errno == errno.ENOSPC else str(err)
        print(f"{name}: stopped: {what}; finished runs are kept: free space and re-run",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAULT


def main(study, argv=None):
    """Entry point of a study script: ``python studies/<name>.py [--preset ...]``."""
    parser = argparse.ArgumentParser(description=study.title, epilog=EXIT_STATUS,
                                     conflict_handler="resolve")  # fmt: skip
    add_arguments(parser)
    if study.has_options:  # the study's own --dataset (with its choices) replaces the generic one
        study.add_options(parser.add_argument_group(f"{study.name} options"))
    args = parser.parse_args(argv)
    return guarded(study.name, lambda a: run_from_args(study, a), args)
