"""Measurement: how fast bnbench runs, against its peers, on this machine.

Imports run one way, each module from those above it in this list and nothing below:

- :mod:`~bnbench.perf.timing`: timing helpers (aligned arrays, the STREAM triad,
  interleaved repeats, validation against the reference, the columns of a timing row);
- :mod:`~bnbench.perf.contenders`: the one table of contenders (operation x library x
  layout -> callable), read by the tests and by every timing;
- :mod:`~bnbench.perf.margins`: bnbench against PyTorch on any caller's arrays;
- :mod:`~bnbench.perf.kernels`: every backend and peer per operation and shape, the
  ghost and renorm variants (sweep kind ``"kernel"``, with the margins);
- :mod:`~bnbench.perf.steps`: one SGD training step, bnbench against PyTorch (sweep kind
  ``"step"``).

Measurement only: targets, tables, figures and sentences belong to the studies that
render them (``studies/kernel_throughput.py``, ``studies/training_throughput.py``).
"""
