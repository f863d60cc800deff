"""aam-dcl shared module: settings, keys, message format, schema inference and runtime helpers."""

from importlib import metadata

try:
    __version__ = metadata.version("aam-dcl")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
