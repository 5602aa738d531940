"""The network side of pyproxy: CLI, listeners, HTTP server, handlers, upstreams."""

__version__ = "0.1.0"
