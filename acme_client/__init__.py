"""Certificates: ACME HTTP-01 issuer, local CA, Caddy-compatible storage, renewal policy."""
