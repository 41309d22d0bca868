"""Studies: a named grid of jobs per preset, a sweep, and an analysis into a report.

A study script (``studies/<name>.py``) defines one :class:`Study` called ``STUDY`` and ends
with ``sys.exit(main(STUDY))``; ``bnbench study NAME`` finds the same object by name. The
library holds no study-specific code: the studies folder is found next to the package
(an editable install, as the README sets up) or through ``$BNBENCH_STUDIES_DIR``.

A study's output folder holds ``runs/`` (one JSON record per job, the cache that makes
re-runs resume), ``study.json`` (name and preset) and the report files.
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
    """``presets``: name -> zero-argument function returning the job list.
    ``analyse(df)`` -> ``(markdown body, [(png name, figure), ...])``.
    ``max_jobs``: a cap on parallel jobs (1 for studies that time things)."""

    name: str
    title: str
    presets: dict[str, Callable[[], list]]
    analyse: Callable
    description: str = ""
    max_jobs: int | None = None
    default_preset: str = "quick"

    def jobs(self, preset):
        if preset not in self.presets:
            raise ValueError(
                f"preset must be one of {sorted(self.presets)} for study {self.name!r}, "
                f"got {preset!r}"
            )
        jobs = self.presets[preset]()
        if not jobs:
            raise ValueError(f"study {self.name!r}, preset {preset!r}: the grid is empty")
        return jobs


def studies_dir():
    if path := os.environ.get("BNBENCH_STUDIES_DIR"):
        return Path(path)
    return Path(__file__).resolve().parent.parent / "studies"


def available():
    """Study name -> script path for every study script found."""
    folder = studies_dir()
    if not folder.is_dir():
        return {}
    return {p.stem.replace("_", "-"): p for p in sorted(folder.glob("*.py"))}


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


def build_report(study, out, command=None):
    """(Re)build the report of ``study`` in ``out`` from whatever runs are saved there."""
    out = Path(out)
    df = sweep.collect(out / "runs")
    if df.empty:
        raise ValueError(f"no finished runs in {out / 'runs'}: nothing to report")
    meta = _read_meta(out)
    body, figures = study.analyse(df)
    failed = sweep.failures(out / "runs")
    if failed:
        body += f"\n\n## Failed runs\n\n{len(failed)} run(s) failed; their errors are in runs/."
    notes = f"Preset `{meta.get('preset', '?')}`: {df['job_key'].nunique()} finished run(s)"
    expected = meta.get("jobs")
    if expected and df["job_key"].nunique() < expected:
        notes += f" of {expected} (a partial study: re-run the same command to resume)"
    body = f"{notes}.\n\n{body}"
    return report.write_report(out, study.title, body, df, figures, command=command)


def _read_meta(out):
    try:
        return json.loads((Path(out) / "study.json").read_text())
    except (OSError, ValueError):
        return {}


def run(study, preset, out, n_jobs=None, scheduler=None, command=None, progress=True):
    """Run (or resume) ``study`` with ``preset`` into ``out``; returns the number of
    failed runs (0 on success)."""
    jobs = study.jobs(preset)
    out = _check_writable(out)
    if study.max_jobs is not None:
        n_jobs = min(n_jobs or study.max_jobs, study.max_jobs)
    meta = {"study": study.name, "preset": preset, "jobs": len(jobs)}
    (out / "study.json").write_text(json.dumps(meta, indent=2) + "\n")
    done, failed, skipped = sweep.run(jobs, out / "runs", n_jobs, scheduler, progress)
    print(f"{study.name}: {done} run(s) done, {skipped} already done, {failed} failed")
    path = build_report(study, out, command)
    print(f"report written to {path / 'report.md'}")
    return failed


def add_arguments(parser):
    parser.add_argument("--preset", default=None, help="quick or full (default: quick)")
    parser.add_argument("--out", default=None, help="output folder (default reports/NAME)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel runs (default: cores)")
    parser.add_argument(
        "--scheduler", default=None, help="Dask scheduler address, or 'local' for a LocalCluster"
    )


def run_from_args(study, args, command=None):
    preset = args.preset or study.default_preset
    out = args.out or f"reports/{study.name}"
    failed = run(study, preset, out, args.jobs, args.scheduler, command or " ".join(sys.argv))
    if failed:
        print(f"{failed} run(s) failed; see {out}/runs", file=sys.stderr)
    return min(failed, 100)


def main(study, argv=None):
    """Entry point of a study script: ``python studies/<name>.py [--preset ...]``."""
    parser = argparse.ArgumentParser(description=study.title)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(study, args)
    except ValueError as err:
        print(f"{study.name}: {err}", file=sys.stderr)
        return 2
