"""``vortex supervise``: one long-running supervisor for many containers.

- :mod:`vortex.supervise.config`: the TOML file, validated up front;
- :mod:`vortex.supervise.supervisor`: one Runtime, one task per service;
- :mod:`vortex.supervise.logs`: CRI-format log files with rotation;
- :mod:`vortex.supervise.control`: the unix control socket and its client;
- ``vortex.supervise.cmd_*``: the CLI subcommands (``supervise``, ``ps``, ...).
"""
