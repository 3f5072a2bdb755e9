"""MIMMO (Multi-Input Massive Multi-Output neural networks) and the efficient-ensemble baselines it is measured
against."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mimmo")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
