"""libfs: the lock-free storage API, its drivers and wrappers (see ``api.py``)."""

from .api import (
    CREATE,
    DEFAULT_CHUNK_SIZE,
    REPLACE,
    Feature,
    ForwardingFs,
    Fs,
    FsError,
    FsExists,
    FsInvalidSpec,
    FsNotFound,
    FsPermission,
    FsUnavailable,
    Stat,
    WriteMode,
)
from .chain import open_fs, parse_chain

__all__ = [
    "CREATE", "DEFAULT_CHUNK_SIZE", "REPLACE", "Feature", "ForwardingFs", "Fs", "FsError",
    "FsExists", "FsInvalidSpec", "FsNotFound", "FsPermission", "FsUnavailable", "Stat",
    "WriteMode", "open_fs", "parse_chain",
]
