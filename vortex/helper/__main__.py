"""``python -I -S .../vortex/helper/__main__.py FD`` (or ``python -m vortex.helper
FD``): the exec'd fork helper (vortex/helper/client.py ``_HelperProcess.execute``)."""

import os
import sys

if __package__ in (None, ""):
    # Run as a file, isolated and without site: import vortex from the tree this file
    # is in (the Runtime's own), after the standard library, never before it.
    sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from vortex.helper.server import main  # after the path is known

main()
