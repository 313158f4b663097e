"""eslserver: the electronic shelf label server and gateway."""

from importlib.metadata import PackageNotFoundError, version

try:  # one source of truth: the version pyproject.toml gave the installed distribution
    __version__ = version("eslserver")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
