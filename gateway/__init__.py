"""pgwarden: a PostgreSQL gateway that decides, masks and records every statement."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pgwarden")
except PackageNotFoundError:  # a source checkout that is not installed
    __version__ = "0.0.0+source"
