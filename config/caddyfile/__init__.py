"""Caddyfile lexer, parser (imports, snippets, env vars) and formatter."""
