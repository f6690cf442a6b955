"""Mail backends by name: ``open_store(spec, settings)`` imports the backend a storage
spec names on first use.  ``memory`` (or ``memory:<name>``) is the in-memory backend;
any other spec is a libfs chain (``posix:/srv/mail``, ``compress:zstd:s3:...``)."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

from .values import StorageSettings

if TYPE_CHECKING:
    from .api import Store

#: Spec prefix -> "module:opener"; the opener is ``async (spec, settings) -> Store``.
BACKENDS = {
    "memory": "cloudcote.core.mail.memory:open_memory_store",
}
#: A spec no entry names: a libfs chain.
LIBFS = "cloudcote.core.mail.store:open_libfs_store"

Opener = Callable[[str, StorageSettings], Awaitable["Store"]]


def backend_of(spec: str) -> str:
    """The "module:opener" that opens ``spec``."""
    return BACKENDS.get(spec.partition(":")[0].strip().lower(), LIBFS)


async def open_store(spec: str, settings: StorageSettings | None = None) -> Store:
    """The store a spec names, opened; it owns what it opened (``close`` ends it).  Errors
    of the backend's opener pass through (``FsError`` for a bad libfs chain)."""
    module, _, name = backend_of(spec).partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"mail backend {module!r} for {spec!r} cannot be loaded: {exc} "
                         f"(is its optional dependency installed?)") from exc
    opener = cast(Opener, getattr(mod, name))
    return await opener(spec, settings or StorageSettings())
