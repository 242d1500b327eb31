"""``vortex run --bundle DIR``: the spec of an OCI bundle, from the command line.

vortex/run_command.py calls :func:`spec_from_args` when ``--bundle`` is
given and runs the spec as it runs any other (foreground, signals forwarded,
the same exit statuses).  The bundle's config.json is the whole
configuration, so a flag that would change the container is refused rather
than merged with it.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from vortex.errors import PermissionDeniedError, SpecError

if TYPE_CHECKING:
    from vortex.spec import ContainerSpec

COMBINABLE = frozenset(
    {"bundle", "name", "no_plugin", "cgroup_parent", "rm", "subcommand", "log_level", "log_format"}
)
"""``vortex run`` options that do not change what the container is."""
REQUIRED_PLUGINS = {
    "security": "applies the bundle's security settings",
    "limits": "applies the bundle's linux.resources",
}


def _run_defaults() -> dict[str, object]:
    from vortex.run_command import configure_parser

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return vars(parser.parse_args([]))


def spec_from_args(args: argparse.Namespace) -> ContainerSpec:
    """The spec for ``vortex run --bundle DIR [--name NAME]``."""
    if args.rootfs is not None or args.command:
        raise SpecError(
            "--bundle takes no ROOTFS or COMMAND: the bundle's config.json names both "
            "(root.path and process.args)"
        )
    defaults = _run_defaults()
    for key, value in vars(args).items():
        if key not in COMBINABLE and key in defaults and value != defaults[key]:
            raise SpecError(
                f"--{key.replace('_', '-')} cannot be combined with --bundle: "
                "set it in the bundle's config.json"
            )
    for plugin, why in REQUIRED_PLUGINS.items():
        if plugin in args.no_plugin:
            raise SpecError(f"--no-plugin {plugin} cannot be combined with --bundle: it {why}")
    if os.geteuid() != 0:
        raise PermissionDeniedError(
            "vortex run --bundle needs root for now: rootless bundles are not supported yet"
        )
    from vortex.oci import load_bundle

    return load_bundle(args.bundle, name=args.name)
