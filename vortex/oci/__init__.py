"""OCI bundles: a runtime-spec config.json and its root filesystem, run by Vortex.

``load_bundle(path)`` returns a :class:`vortex.ContainerSpec` for
``await runtime.run(spec)``; ``vortex run --bundle DIR`` runs it in the
foreground.  docs/oci.md lists every field, how it maps and what is refused.
Nothing here is imported unless a bundle is used: the CLI's cold start does
not pay for it.
"""

from __future__ import annotations

from vortex.oci.bundle import load_bundle, spec_from_config

__all__ = ["load_bundle", "spec_from_config"]
