"""MIMMO (Multi-Input Massive Multi-Output neural networks) and the efficient-ensemble baselines it is measured
against."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mimmo")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"


class RunStopped(RuntimeError):
    """A run stopped for a reason outside its settings that the message fully explains (the command prints it as
    one line and exits with status 1): a CUDA graph that failed under ``train.cuda_graphs=true``
    (:class:`mimmo.training.step.CudaGraphFailure`), an installed Lightning or Hydra outside the tested range
    (:class:`mimmo.training.compat.UnsupportedVersion`)."""
