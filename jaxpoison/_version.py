"""The installed distribution's version, for the package and for the records runs write."""

from importlib import metadata

try:
  __version__ = metadata.version("jaxpoison")
except metadata.PackageNotFoundError:  # A source tree on sys.path that was never installed.
  __version__ = "0+unknown"
