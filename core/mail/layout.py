"""Where the libfs backend keeps a user's mail, and the message objects it writes.

Layout under the libfs chain (see docs/storage.md)::

    users/<user>/list/{log,snap}.<k>          the user's mailbox list (mailbox_list.py)
    users/<user>/mbox/<guid>/index/{log,snap}.<k>   a mailbox's log and snapshots
    users/<user>/mbox/<guid>/cache/<id>       cache chunks the snapshots refer to
    users/<user>/mbox/<guid>/msg/<id>         sdbox: one object per message
    storage/<id>                              mdbox: messages packed into shared objects

A message's location in the index is ``<id>:<offset>`` (sdbox) or ``@<id>:<offset>``
(mdbox), the offset being where its bytes start after the metadata line.
"""

from __future__ import annotations

import urllib.parse

from cloudcote.libfs.api import Fs

from . import objects
from .errors import store_io


def user_prefix(user: str) -> str:
    """The libfs prefix of a user's mail: the name percent-encoded so that no user name can
    reach another user's objects (``/``, ``..`` and the like are encoded)."""
    enc = urllib.parse.quote(user, safe="@+-_.")
    if enc in (".", ".."):
        enc = enc.replace(".", "%2E")
    return f"users/{enc}"


def object_path(base: str, loc: str) -> tuple[str, int]:
    """The object and offset of a location in the mailbox under ``base``."""
    if loc.startswith("@"):
        oid, _, off = loc[1:].partition(":")
        return f"storage/{oid}", int(off)
    oid, _, off = loc.partition(":")
    return f"{base}/msg/{oid}", int(off)


async def write_sdbox(fs: Fs, base: str, raw: bytes, meta: objects.StoredMeta) -> str:
    """Write one message object of the mailbox under ``base`` (sdbox); its location."""
    oid = objects.new_object_id()
    await store_io(fs.write(f"{base}/msg/{oid}", objects.encode_message(meta, raw)))
    return f"{oid}:{meta.offset}"


async def write_mdbox(fs: Fs, refs: list[tuple[str, str]],
                      items: list[tuple[bytes, objects.StoredMeta]]) -> list[str]:
    """Pack ``items`` into one new storage object (mdbox), its metadata naming the
    (user, mailbox GUID) ``refs``; their locations.  One write: all or nothing."""
    oid = objects.new_object_id()
    parts: list[bytes] = []
    locs: list[str] = []
    pos = 0
    for raw, meta in items:
        meta.refs = [list(r) for r in refs]
        blob = objects.encode_message(meta, raw)
        locs.append(f"@{oid}:{pos + meta.offset}")
        parts.append(blob)
        pos += len(blob)
    await store_io(fs.write(f"storage/{oid}", b"".join(parts)))
    return locs
