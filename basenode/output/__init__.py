"""Outputs: a rendered text put in place (a file: candidate, check, atomic rename, reload)."""
