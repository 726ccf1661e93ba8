"""Domain exceptions; only the CLI and the service turn them into messages and exit codes."""


class S2MError(Exception):
    """Base of every error the tool reports to a user as one line."""

    exit_code = 1


class BadInputError(S2MError):
    """An input file or argument cannot be used (unreadable image, empty sketch, bad flag)."""

    exit_code = 2


class BadImageError(BadInputError):
    """An image file is truncated, not an image, empty or too large."""


class CheckpointError(S2MError):
    """A checkpoint file is missing, corrupt or of an unknown format."""


class ArchiveError(S2MError):
    """An archive folder is missing or malformed."""
