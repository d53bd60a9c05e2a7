"""The project's own exception and warning types; the CLI prints their message without a traceback."""


class ClothprobeError(Exception):
    """A user-facing error: the message names the file or setting at fault and what to do."""


class ClothprobeWarning(UserWarning):
    """Something the user should know that did not stop the work (e.g. a runtime fell back to float32)."""
