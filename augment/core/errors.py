"""Exceptions that the CLI turns into one-line messages."""


class AugmentError(Exception):
    """A user-facing error: bad input, bad config, refused operation. The CLI prints it on one line."""


class DatasetError(AugmentError):
    """A dataset on disk is missing, malformed or does not fit its use."""


class CheckpointError(AugmentError):
    """A checkpoint is missing, corrupt, or does not fit the data it is used with."""


class BadSample(AugmentError):
    """One sample cannot be used (corrupt image, size mismatch, label out of range...).

    Long jobs quarantine the sample with `reason` and go on.
    """

    def __init__(self, reason: str, source: str = "") -> None:
        super().__init__(f"{source}: {reason}" if source else reason)
        self.reason = reason
        self.source = source


def error_lines(exc: BaseException) -> list[str]:
    """The non-blank lines of an exception's message, stripped."""
    return [line.strip() for line in str(exc).splitlines() if line.strip()]


def first_line(exc: BaseException) -> str:
    """An exception's first non-blank message line (its type name when it has none): the part a one-line error
    quotes of a library's multi-line message."""
    return (error_lines(exc) or [type(exc).__name__])[0]
