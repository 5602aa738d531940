"""Upstreams of reverse_proxy: keepalive pools, runtime state, selection, health, retries, DNS."""
