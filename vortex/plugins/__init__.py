"""Built-in plugins.  Each is registered like a third-party plugin and can be
disabled by name (``--no-plugin NAME``):

- ``limits``: writes the spec's resource limits into the container's cgroup;
- ``net``: brings up loopback in the container's network namespace;
- ``logging``: emits structlog events for the container lifecycle.
"""
