"""Outputs: a rendered text put in place (a file: candidate, check, atomic rename, reload; HAProxy:
runtime API or check + seamless reload)."""
