"""Pure functions: topology (plus paths and ports) in, configuration text out.

No I/O here, so every renderer is tested by comparing its output, and the
nginx output also by `nginx -t`.
"""
from .nginx import render_nginx_conf, render_upstream_conf
from .pgbouncer import render_pgbouncer_ini, render_userlist
from .postgres import primary_settings, replica_settings, render_hba, render_conf_lines

__all__ = ["render_nginx_conf", "render_upstream_conf", "render_pgbouncer_ini",
           "render_userlist", "primary_settings", "replica_settings", "render_hba",
           "render_conf_lines"]
