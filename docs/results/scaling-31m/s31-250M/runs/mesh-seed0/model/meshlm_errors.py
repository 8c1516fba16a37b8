# Copied from meshlm.errors (meshlm 0.1.0) by meshlm.hub.export_remote_code; do not edit.
"""User-facing errors.

Anything a user can get wrong (a config value, a layout string, a path, a data
source, a checkpoint) raises :class:`MeshLMError` with one clear sentence. The
CLI prints it as ``error: ...`` and exits with status 2 instead of a traceback.
"""


class MeshLMError(ValueError):
    """A bad input from the user, with a message that says how to fix it."""
