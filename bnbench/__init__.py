"""bnbench: Numba batch-norm kernels and a benchmark of test-time batch-norm statistics."""

from importlib.metadata import PackageNotFoundError, version

from .functional import (
    BackwardResult,
    GroupStats,
    RenormResult,
    TrainResult,
    batch_norm_backward,
    batch_norm_eval,
    batch_norm_relu_backward,
    batch_norm_relu_eval,
    batch_norm_relu_train,
    batch_norm_train,
    batch_renorm_backward,
    batch_renorm_train,
    merge_group_stats,
    update_running_stats,
)

try:
    __version__ = version("bnbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "BackwardResult",
    "GroupStats",
    "RenormResult",
    "TrainResult",
    "__version__",
    "batch_norm_backward",
    "batch_norm_eval",
    "batch_norm_relu_backward",
    "batch_norm_relu_eval",
    "batch_norm_relu_train",
    "batch_norm_train",
    "batch_renorm_backward",
    "batch_renorm_train",
    "merge_group_stats",
    "update_running_stats",
]
