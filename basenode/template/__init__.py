"""Templates: Jinja2's sandbox over validated values (render), the functions a template calls to declare
what it needs (functions), data plugins (plugins), and the configured set rendered round by round (loop)."""
