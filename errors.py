"""One exception type for problems a user can fix; the CLI prints its message without a traceback."""


class ClothprobeError(Exception):
    """A user-facing error: the message names the file or setting at fault and what to do."""
