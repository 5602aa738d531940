"""HTTP/1.1 wire protocol: server connections, upstream connections, exchanges, runtime."""
