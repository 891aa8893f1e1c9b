"""The installed distribution's version: pyproject's, read through importlib.metadata, so it is
written in one place. Every layer may import it (the root package `satpipe` is the public API,
which imports every layer, so lower layers must not import it for this)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("satpipe")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
