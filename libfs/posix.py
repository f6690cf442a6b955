"""The built-in driver: objects as files under a directory (the embedded default).

Chain syntax: ``posix:/var/mail`` or ``posix:path=/var/mail,fsync=always``.

- create: the data goes to a temporary file that is then ``link(2)``-ed to its name;
  ``link`` fails with EEXIST if the name exists, so exactly one creator wins and a reader
  sees nothing or the whole file;
- replace: temporary file + ``rename(2)``;
- append: one ``write(2)`` on an ``O_APPEND`` descriptor per record; Linux holds the
  inode lock for a whole write to a regular file, so records never interleave.  The
  descriptor is the call's own, so its file offset after the write is the record's end:
  the record starts at that offset minus its length;
- reads: ``write(2)`` moves the file size folio by folio while it copies a record, so a
  plain read racing an append can end inside the record.  A read that meets the end of a
  file asks ``lseek(SEEK_HOLE)``, which waits for the inode lock the append holds, whether
  more is arriving, and reads that too: every read path ends at a record boundary;
- metadata: extended attributes ``user.cloudcote.<key>`` set on the temporary file before it
  is published, so they appear atomically with the data;
- durability, ``fsync=``: ``optimized`` (the default) syncs the file and its directory
  before a write, copy or delete returns, and an append only when ``sync`` asks (an append
  that starts a file syncs the directory, so the name is never what is lost); ``always``
  syncs every append before it returns too (``sync`` is then a no-op); ``never`` syncs
  nothing.  What each mode means for mail: docs/storage.md, "Durability on posix".

A path can't be both an object and a "directory" of other objects here (``a`` and ``a/b``),
as on any POSIX file system.  The top-level name ``.cloudcote-tmp`` is reserved.

Change feed (Linux): one inotify instance per PosixFs (the kernel allows 128 per user by
default, watches are plentiful), one watch per subscribed directory, shared by every
subscriber of that directory.  Every change of an object is a directory event: an append
is one ``write(2)`` (IN_MODIFY), a create is a ``link(2)`` (IN_CREATE), a replace a
``rename(2)`` (IN_MOVED_TO), a delete an ``unlink(2)`` (IN_DELETE); temporary files live in
``.cloudcote-tmp``, which no one watches.  Without inotify (another OS, the instance
limit) there is no feed; past the watch limit (``fs.inotify.max_user_watches``) a
subscription is refused and its caller polls.  Both are logged once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .api import (
    DEFAULT_CHUNK_SIZE,
    ChangeCallback,
    ChangeFeed,
    Feature,
    Fs,
    FsError,
    FsExists,
    FsInvalidSpec,
    FsNotFound,
    FsPermission,
    FsUnavailable,
    PrefixRouter,
    Stat,
    Subscription,
    WriteMode,
    check_metadata,
    check_path,
    check_prefix,
    feed_directory,
    unique_name,
)

if TYPE_CHECKING:
    from .chain import Settings

TMP_DIR = ".cloudcote-tmp"
#: The ``fsync=`` settings; the first is the default.
FSYNC_MODES = ("optimized", "always", "never")
XATTR_PREFIX = "user.cloudcote."
log = logging.getLogger("cloudcote.libfs.posix")
#: Full-size inotify events read per read(2) when the descriptor is readable.
INOTIFY_BATCH = 512
#: Bytes a read asks for beyond the size fstat reports, so that the read itself meets the
#: end of the file (see ``_read_settled``).
READ_SLACK = 64 * 1024


def _map_oserror(exc: OSError, op: str, path: str) -> FsError:
    msg = f"posix {op} {path!r}: {exc.strerror or exc}"
    if exc.errno == errno.ENOENT:
        return FsNotFound(msg, path=path, op=op)
    if exc.errno == errno.EEXIST:
        return FsExists(msg, path=path, op=op)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return FsPermission(msg, path=path, op=op)
    if exc.errno in (errno.EIO, errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT, errno.ESTALE):
        return FsUnavailable(msg, path=path, op=op)
    return FsError(msg, path=path, op=op)


class PosixFs(Fs):
    """Objects as files under ``root``; see the module docstring for the guarantees."""

    name = "posix"

    def __init__(self, root: str, *, fsync: bool | str = "optimized",
                 xattrs: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.tmp = os.path.join(self.root, TMP_DIR)
        if isinstance(fsync, bool):
            fsync = "always" if fsync else "never"
        if fsync not in FSYNC_MODES:
            raise FsInvalidSpec(f"posix: fsync={fsync!r} is invalid: one of "
                                f"{', '.join(FSYNC_MODES)}")
        self.fsync_mode = fsync
        #: Writes, copies and deletes are synced before they return.
        self.fsync = fsync != "never"
        #: Appends are synced before they return (else ``sync`` does it).
        self.fsync_appends = fsync == "always"
        self.xattrs = xattrs
        feats = {Feature.APPEND, Feature.CONSISTENT_LIST, Feature.ATOMIC_CREATE,
                 Feature.BATCH_LOG_READ}
        if xattrs:
            feats.add(Feature.METADATA)
        if fsync:
            feats.add(Feature.DURABLE)
        self._features = frozenset(feats)
        self._feed: InotifyFeed | None = None
        self._feed_tried = False

    @classmethod
    async def open(cls, settings: Settings, parent: Fs | None) -> PosixFs:
        root = settings.str("", None) or settings.str("path", None, required=True)
        assert root is not None
        fsync = settings.choice("fsync", "optimized", FSYNC_MODES)
        settings.finish()
        try:
            os.makedirs(os.path.join(root, TMP_DIR), exist_ok=True)
        except OSError as exc:
            raise FsInvalidSpec(f"posix: cannot use directory {root!r}: {exc.strerror}") from exc
        if not os.access(root, os.W_OK | os.X_OK):
            raise FsInvalidSpec(f"posix: directory {root!r} is not writable")
        return cls(root, fsync=fsync, xattrs=_xattrs_work(os.path.join(root, TMP_DIR)))

    @property
    def features(self) -> frozenset[Feature]:
        return self._features

    def describe(self) -> str:
        return f"posix:{self.root}"

    def change_feed(self) -> InotifyFeed | None:
        """One inotify instance for this stage, made on first use; None where inotify is
        missing or the instance limit is reached (logged once)."""
        if not self._feed_tried:
            self._feed_tried = True
            self._feed = InotifyFeed.create(self.root)
        return self._feed

    async def close(self) -> None:
        if self._feed is not None:
            await self._feed.close()

    def _full(self, path: str) -> str:
        check_path(path)
        if path.split("/", 1)[0] == TMP_DIR:
            raise FsError(f"posix: {TMP_DIR!r} is reserved", path=path)
        return os.path.join(self.root, path)

    # -- reads ----------------------------------------------------------------------------

    async def read(self, path: str) -> bytes:
        """The whole file, ending at a record boundary (see ``_read_settled``).
        Raises FsNotFound."""
        full = self._full(path)

        def run() -> bytes:
            with open(full, "rb") as f:
                return _read_settled(f.fileno(), 0, None)

        return await self._run(run, "read", path)

    async def read_range(self, path: str, start: int, end: int | None = None) -> bytes:
        """Bytes [start, end) of one open file; a range that meets the end of the file ends
        at a record boundary. Raises FsNotFound."""
        full = self._full(path)

        def run() -> bytes:
            with open(full, "rb") as f:
                return _read_settled(f.fileno(), start, end)

        return await self._run(run, "read", path)

    async def read_stream(
        self, path: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        """Chunks of one open file descriptor: a concurrent replace never mixes in, and the
        last chunk ends at a record boundary."""
        full = self._full(path)
        f = await self._run(lambda: open(full, "rb"), "read", path)
        try:
            chunks = _chunks_settled(f.fileno(), chunk_size)
            while (chunk := await self._run(lambda: next(chunks, None), "read", path)):
                yield chunk
        finally:
            f.close()

    async def stat(self, path: str) -> Stat:
        """Size, mtime and xattr metadata. Raises FsNotFound."""
        full = self._full(path)

        def run() -> Stat:
            st = os.stat(full)
            if not stat.S_ISREG(st.st_mode):
                raise FileNotFoundError(errno.ENOENT, "not a file")
            size = st.st_size
            if size:
                # The size a read would end at: not inside a record still being appended.
                fd = os.open(full, os.O_RDONLY)
                try:
                    size = max(size, _settled_end(fd, size - 1))
                finally:
                    os.close(fd)
            return Stat(path, size, st.st_mtime, self._get_meta(full))

        return await self._run(run, "stat", path)

    def _get_meta(self, full: str) -> dict[str, str]:
        if not self.xattrs:
            return {}
        meta = {}
        for name in os.listxattr(full):
            if name.startswith(XATTR_PREFIX):
                meta[name[len(XATTR_PREFIX):]] = os.getxattr(full, name).decode("ascii")
        return meta

    # -- writes ---------------------------------------------------------------------------

    def _new_tmp(self) -> tuple[str, int]:
        tmp = os.path.join(self.tmp, unique_name(""))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:
            os.makedirs(self.tmp, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        return tmp, fd

    def _finish_tmp(self, tmp: str, fd: int, metadata: dict[str, str]) -> None:
        try:
            if self.xattrs:
                for key, value in metadata.items():
                    os.setxattr(tmp, XATTR_PREFIX + key, value.encode("ascii"))
            elif metadata:
                raise FsError("posix: this file system keeps no extended attributes")
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _publish(self, tmp: str, full: str, mode: WriteMode) -> None:
        """Link (CREATE) or rename (REPLACE) a finished temporary file to its name."""
        parent = os.path.dirname(full)
        for attempt in range(2):
            try:
                if mode is WriteMode.CREATE:
                    os.link(tmp, full)
                    os.unlink(tmp)
                else:
                    os.rename(tmp, full)
                break
            except FileNotFoundError:
                if attempt or not os.path.exists(tmp):
                    raise
                os.makedirs(parent, exist_ok=True)
            except BaseException:
                _unlink_quiet(tmp)
                raise
        if self.fsync:
            _fsync_dir(parent)

    async def write(
        self,
        path: str,
        data: bytes,
        mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """CREATE: link from a temp file (EEXIST -> FsExists); REPLACE: rename."""
        full = self._full(path)
        meta = check_metadata(metadata)

        def run() -> None:
            if mode is WriteMode.CREATE and os.path.lexists(full):
                raise FileExistsError(errno.EEXIST, "exists")
            tmp, fd = self._new_tmp()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            except BaseException:
                os.close(fd)
                _unlink_quiet(tmp)
                raise
            self._finish_tmp(tmp, fd, meta)
            self._publish(tmp, full, mode)

        await self._run(run, "write", path)

    async def write_stream(
        self,
        path: str,
        chunks: AsyncIterable[bytes],
        mode: WriteMode = WriteMode.CREATE,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Chunks go to a temp file one at a time, then it is published like ``write``."""
        full = self._full(path)
        meta = check_metadata(metadata)
        if mode is WriteMode.CREATE and os.path.lexists(full):
            raise FsExists(f"posix write {path!r}: exists", path=path, op="write")
        tmp, fd = await self._run(self._new_tmp, "write", path)
        size = 0
        try:
            async for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    n = await self._run(lambda v=view: os.write(fd, v), "write", path)
                    view = view[n:]
                size += len(chunk)
        except BaseException:
            os.close(fd)
            _unlink_quiet(tmp)
            raise

        def finish() -> None:
            self._finish_tmp(tmp, fd, meta)
            self._publish(tmp, full, mode)

        await self._run(finish, "write", path)
        return size

    async def append(self, path: str, data: bytes) -> int:
        """One write(2) on an O_APPEND descriptor: records never interleave.  Returns the
        record's offset."""
        full = self._full(path)
        if not data:
            raise FsError("posix append: empty record", path=path, op="append")

        def run() -> int:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
            try:
                fd = os.open(full, flags, 0o600)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(full), exist_ok=True)
                fd = os.open(full, flags, 0o600)
            try:
                n = os.write(fd, data)
                if n != len(data):
                    # Only a full disk does this to a regular file; the record is torn, so
                    # say so loudly: the log reader above detects and skips torn records.
                    raise OSError(errno.ENOSPC, f"short append ({n} of {len(data)} bytes)")
                # O_APPEND moved this private descriptor to the end of our own record, under
                # the same inode lock as the write: no other appender can move it.
                end = os.lseek(fd, 0, os.SEEK_CUR)
                if self.fsync_appends:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if self.fsync and end == len(data):
                # The first record: the file may be new, and its name must outlive a power
                # loss as surely as the records that a later sync makes durable.
                _fsync_dir(os.path.dirname(full))
            return end - len(data)

        return await self._run(run, "append", path)

    async def sync(self, path: str) -> None:
        """fsync(2) the file (``fsync=optimized``): the records every process appended to it
        so far are durable.  A no-op in the other modes, and for an absent file."""
        if self.fsync_appends or not self.fsync:
            return
        full = self._full(path)

        def run() -> None:
            try:
                fd = os.open(full, os.O_RDONLY)
            except FileNotFoundError:
                return
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        await self._run(run, "sync", path)

    async def copy(self, src: str, dst: str, mode: WriteMode = WriteMode.CREATE) -> None:
        """Data (read as ``read_stream`` does) and xattrs copied into a temp file, then
        published as ``write`` does."""
        full_src, full_dst = self._full(src), self._full(dst)

        def run() -> None:
            if mode is WriteMode.CREATE and os.path.lexists(full_dst):
                raise FileExistsError(errno.EEXIST, "exists")
            with open(full_src, "rb") as f:
                meta = self._get_meta(full_src)
                tmp, fd = self._new_tmp()
                try:
                    for chunk in _chunks_settled(f.fileno(), DEFAULT_CHUNK_SIZE):
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view):]
                except BaseException:
                    os.close(fd)
                    _unlink_quiet(tmp)
                    raise
            self._finish_tmp(tmp, fd, meta)
            self._publish(tmp, full_dst, mode)

        await self._run(run, "copy", f"{src} -> {dst}")

    async def delete(self, path: str) -> None:
        """unlink(2); an absent file is not an error."""
        full = self._full(path)

        def run() -> None:
            try:
                os.unlink(full)
            except FileNotFoundError:
                return
            if self.fsync:
                _fsync_dir(os.path.dirname(full))

        await self._run(run, "delete", path)

    async def iter(self, prefix: str = "") -> AsyncIterator[str]:
        """Walks the directory holding ``prefix``; complete and current (consistent)."""
        check_prefix(prefix)
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""

        def run() -> list[str]:
            out = []
            top = os.path.join(self.root, base) if base else self.root
            for dirpath, dirnames, filenames in os.walk(top):
                rel = os.path.relpath(dirpath, self.root)
                rel = "" if rel == "." else rel + "/"
                if not rel:
                    dirnames[:] = [d for d in dirnames if d != TMP_DIR]
                dirnames[:] = [d for d in dirnames if (rel + d + "/").startswith(prefix)
                               or prefix.startswith(rel + d + "/")]
                for name in filenames:
                    if (rel + name).startswith(prefix):
                        out.append(rel + name)
            return out

        for name in await self._run(run, "iter", prefix):
            yield name

    async def _run(self, fn, op: str, path: str):
        try:
            return await asyncio.to_thread(fn)
        except OSError as exc:
            raise _map_oserror(exc, op, path) from exc


class InotifyFeed(ChangeFeed):
    """The posix change feed: one inotify instance, a watch per subscribed directory
    (refcounted by the subscriptions of that directory), read in the event loop."""

    def __init__(self, root: str, inotify: Any) -> None:
        super().__init__()
        from asyncinotify import Mask

        self.root = root
        self.inotify = inotify
        self.mask = (Mask.MODIFY | Mask.CREATE | Mask.MOVED_TO | Mask.MOVED_FROM
                     | Mask.DELETE | Mask.ONLYDIR)
        #: directory (relative, "" for the root) -> watch descriptor, and back.
        self._wd_of: dict[str, int] = {}
        self._dir_of: dict[int, str] = {}
        self._watch_of: dict[int, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._warned = False
        self._closed = False
        #: inotify instances this feed opened (one) and watches added, for monitoring.
        self.instances = 1
        self.events = 0

    @classmethod
    def create(cls, root: str) -> InotifyFeed | None:
        try:
            from asyncinotify import Inotify
        except (ImportError, OSError, AttributeError) as exc:
            # Not Linux, or a libc without inotify: asyncinotify fails to import.
            log.info("posix %s: no inotify (%s); changes by other processes are polled",
                     root, exc)
            return None
        try:
            inotify = Inotify(cache_size=INOTIFY_BATCH)
            # asyncinotify 4.4's InitFlags.NONBLOCK is O_CLOEXEC by mistake: the reader
            # callback drains until EAGAIN, so the descriptor must not block.
            os.set_blocking(inotify.fd, False)
        except OSError as exc:
            log.warning("posix %s: cannot open an inotify instance (%s; see "
                        "fs.inotify.max_user_instances); changes by other processes are "
                        "polled", root, exc.strerror or exc)
            return None
        return cls(root, inotify)

    @property
    def watches(self) -> int:
        """Directories watched now."""
        return len(self._wd_of)

    async def subscribe(self, prefix: str, callback: ChangeCallback) -> Subscription | None:
        """A watch on the prefix's directory (created if absent: an empty directory is no
        object).  None past the kernel's watch limit."""
        if self._closed:
            return None
        check_prefix(prefix)
        if prefix.split("/", 1)[0] == TMP_DIR:
            raise FsError(f"posix: {TMP_DIR!r} is reserved", path=prefix)
        self._attach(asyncio.get_running_loop())
        directory = feed_directory(prefix)
        if directory not in self._wd_of:
            full = os.path.join(self.root, directory) if directory else self.root
            try:
                # Synchronous: one quick system call, and no other subscriber or close can
                # slip in between the watch and our record of it.
                watch = self._add_watch(full)
            except OSError as exc:
                if not self._warned:
                    self._warned = True
                    log.warning("posix %s: cannot watch %s (%s%s); it and others like it "
                                "are polled", self.root, directory or ".",
                                exc.strerror or exc,
                                "; see fs.inotify.max_user_watches"
                                if exc.errno == errno.ENOSPC else "")
                return None
            self._wd_of[directory] = watch.wd
            self._dir_of[watch.wd] = directory
            self._watch_of[watch.wd] = watch
        sub = Subscription(self, prefix, callback)
        self.router.add(sub)
        return sub

    def _add_watch(self, full: str) -> Any:
        try:
            return self.inotify.add_watch(full, self.mask)
        except FileNotFoundError:
            os.makedirs(full, exist_ok=True)
            return self.inotify.add_watch(full, self.mask)

    def _unsubscribe(self, sub: Subscription) -> None:
        if self.router.remove(sub) and not self._closed:
            wd = self._wd_of.pop(sub.directory, None)
            if wd is not None:
                self._dir_of.pop(wd, None)
                watch = self._watch_of.pop(wd)
                try:
                    self.inotify.rm_watch(watch)
                except (OSError, ValueError):
                    pass  # the directory (or the instance) went away, and the watch with it

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the inotify descriptor in ``loop`` (again, if an earlier loop is gone)."""
        if self._loop is loop:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.inotify.fd)
        self._loop = loop
        loop.add_reader(self.inotify.fd, self._drain)

    def _drain(self) -> None:
        """Dispatch every event queued on the descriptor (the reader callback)."""
        from asyncinotify import Mask

        while not self._closed:
            try:
                event = self.inotify.sync_get()
            except BlockingIOError:
                return
            except OSError as exc:
                log.error("posix %s: reading inotify events failed: %s", self.root, exc)
                return
            if event is None:
                return
            self.events += 1
            mask = event.mask
            if Mask.Q_OVERFLOW in mask:
                # The kernel dropped events: everyone looks for themselves.
                self.router.dispatch_all()
                continue
            wd = event.watch.wd if event.watch is not None else None
            directory = self._dir_of.get(wd) if wd is not None else None
            if directory is None:
                continue  # a watch we removed
            if Mask.IGNORED in mask:
                # The directory itself is gone (a deleted mailbox): its subscribers find
                # out by looking; they hear nothing more from here.
                self._dir_of.pop(wd, None)  # type: ignore[arg-type]
                self._watch_of.pop(wd, None)  # type: ignore[arg-type]
                if self._wd_of.get(directory) == wd:
                    del self._wd_of[directory]
                self.router.dispatch_directory(directory)
                continue
            if event.name is None:
                continue
            name = os.fsdecode(event.name)
            self.router.dispatch(f"{directory}/{name}" if directory else name)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.inotify.fd)
        self.inotify.close()
        self.router = PrefixRouter()
        self._wd_of.clear()
        self._dir_of.clear()
        self._watch_of.clear()


def _settled_end(fd: int, pos: int) -> int:
    """Where the file ends once no append is copying into it: ``pos`` if nothing lies at or
    after ``pos``.

    ``lseek(SEEK_HOLE)`` takes the inode lock that ``write(2)`` holds for its whole record
    (ext4, tmpfs, btrfs), so it waits out an append in progress; this driver's files have
    no holes, so the first hole at or after ``pos`` is the end of the file.
    """
    try:
        return os.lseek(fd, pos, os.SEEK_HOLE)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # the file ends at or before pos
            return pos
        if exc.errno == errno.EINVAL:  # no SEEK_HOLE on this file system: the size as it is
            return max(pos, os.fstat(fd).st_size)
        raise


def _read_settled(fd: int, start: int, end: int | None) -> bytes:
    """Bytes [start, end) of an open file, never a part of a record an append is still
    copying.

    ``write(2)`` copies a record folio by folio and moves the file size after each one, so
    a plain read racing an append of a record that straddles a folio ends inside it.  A
    read that meets the end of the file is accepted only if ``_settled_end`` then finds
    nothing beyond it; otherwise the bytes that arrived are read too.  Bytes below a size
    once seen never change (appends only add), so every piece read stays valid.  Where
    reads themselves exclude writes (XFS) the read's own end is a record boundary.
    """
    parts = []
    pos = start
    while end is None or pos < end:
        stop = os.fstat(fd).st_size + READ_SLACK
        if end is not None:
            stop = min(stop, end)
        want = max(0, stop - pos)
        data = os.pread(fd, want, pos) if want else b""
        parts.append(data)
        pos += len(data)
        if len(data) < want or want == 0:
            # The read met the end of the file: done if no append was still arriving.
            if _settled_end(fd, pos) <= pos:
                break
    return b"".join(parts)


def _chunks_settled(fd: int, chunk_size: int) -> Iterator[bytes]:
    """The file in chunks of at most ``chunk_size`` bytes, the last ending where no append
    was still copying (as ``_read_settled``)."""
    pos = 0
    while True:
        chunk = os.pread(fd, chunk_size, pos)
        pos += len(chunk)
        if chunk:
            yield chunk
        if len(chunk) < chunk_size and _settled_end(fd, pos) <= pos:
            return


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _xattrs_work(directory: str) -> bool:
    probe = os.path.join(directory, f"xattr-probe-{os.getpid()}-{time.monotonic_ns()}")
    try:
        with open(probe, "wb"):
            pass
        os.setxattr(probe, XATTR_PREFIX + "probe", b"1")
        return True
    except OSError:
        return False
    finally:
        _unlink_quiet(probe)
