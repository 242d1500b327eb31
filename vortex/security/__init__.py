"""Secure by default: capabilities, no_new_privs, seccomp, masked paths, rlimits, devices.

Mechanism lives here (syscall wrappers, the seccomp compiler, what the init
applies); policy lives in the built-in ``security`` plugin
(:mod:`vortex.plugins.security`).  See docs/security.md.
"""

from __future__ import annotations

from vortex.security.options import SecurityOptions
from vortex.security.policy import InitSecurity, SecurityPolicy

__all__ = ("InitSecurity", "SecurityOptions", "SecurityPolicy")
