"""The network side of pyproxy: CLI, listeners, HTTP server, handlers, upstreams."""

from proxy import native as _native

__version__ = "0.1.0"

# Before any hot-path module is imported: use the mypyc-compiled build when it matches the source.
_native.install()
