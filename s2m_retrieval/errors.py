"""Domain exceptions; only the CLI and the service turn them into messages and exit codes."""


# Control characters and line separators as their escapes (messages embed file names and CSV cells as given).
_ESCAPES = {c: repr(chr(c))[1:-1] for c in (*range(32), *range(127, 160), 0x2028, 0x2029)}


class S2MError(Exception):
    """Base of every error the tool reports to a user as one line."""

    exit_code = 1

    def __str__(self) -> str:
        return super().__str__().translate(_ESCAPES)


class BadInputError(S2MError):
    """An input file or argument cannot be used (unreadable image, empty sketch, bad flag)."""

    exit_code = 2


class UnknownNameError(BadInputError):
    """A name looked up in one of the registries (encoders, perceptual distances, evaluation methods) is not in it."""


def lookup(registry, name: str, what: str):
    """`registry[name]`, the one way named things are found; an unknown name is an UnknownNameError listing the
    known ones."""
    try:
        return registry[name]
    except KeyError:
        raise UnknownNameError(f"unknown {what} {name!r}; choose one of {', '.join(registry)}") from None


class BadImageError(BadInputError):
    """An image file is truncated, not an image, empty or too large."""


class UnsupportedImageError(BadImageError):
    """An image file decodes, but in a format the tool does not accept (see data.image_io.IMAGE_FORMATS)."""


class ImageTooLargeError(BadImageError):
    """An image has more pixels than allowed, or trips Pillow's decompression-bomb limit."""


class CheckpointError(S2MError):
    """A checkpoint file is missing, corrupt or of an unknown format."""


class ArchiveError(S2MError):
    """An archive folder is missing or malformed."""


class DatabaseError(S2MError):
    """The metadata database cannot be opened, migrated or written."""


class DatabaseLockedError(DatabaseError):
    """Another process holds the write lock of the metadata database for too long."""


class IndexMissingError(S2MError):
    """No index of that name exists under the home folder."""


class IndexBusyError(S2MError):
    """Another process is writing the same index (build, add or remove)."""


class IndexCorruptError(S2MError):
    """An index file (FAISS, manifest, vector shard) is damaged or unreadable."""


class IndexIncompleteError(IndexCorruptError):
    """An index's FAISS file lags its SQL rows: a build was killed before it saved; rerunning it finishes it."""


class VersionMismatchError(S2MError):
    """An index was built by another model version or perceptual metric than the one in use."""


class PerceptualWeightsMissing(S2MError):
    """The weights file a perceptual distance backend needs is not on this machine."""


class WeightsMissingError(S2MError):
    """Pretrained weights (e.g. Inception for standard FID) are not on this machine."""
