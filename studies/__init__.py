"""The study scripts, installed as the package ``bnbench_studies`` by a regular (non-editable)
``pip install``, so that ``bnbench study`` finds them (see :func:`bnbench.study.studies_dir`).
Each script is also run directly: ``python studies/<name>.py``."""
