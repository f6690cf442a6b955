"""Driver chains: parse a spec, find each stage lazily, open the chain bottom-up.

A chain is written on one line, outermost wrapper first, driver last::

    latency:20ms:randomfail:0.05:posix:/var/mail
    compress:zstd:cache:size=64MB:s3:bucket=mail,endpoint=http://127.0.0.1:8333

A wrapper takes at most one argument segment (the text up to the next ``:``); it has none
when the next segment is itself a stage name.  The driver takes the whole rest of the
line, so URLs with ``:`` survive.  An argument is a comma-separated list of ``key=value``
items; an item without ``=`` sets the stage's positional setting (the path of ``posix``,
the delay of ``latency``...).  In TOML the same chain may be a list of tables, outermost
first: ``fs = [{stage = "latency", delay = "20ms"}, {stage = "posix", path = "/var/mail"}]``.

A chain over a remote driver gets a ``retry`` stage at its top unless it names one
(:func:`with_defaults`; ``retry:attempts=0:`` turns it off); see docs/libfs.md.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from .api import Fs, FsInvalidSpec

#: name -> ("module:Class", extra to install when its import fails or None).
#: Modules are imported on first use only, so a missing optional library matters only to
#: the chains that name its driver.
REGISTRY: dict[str, tuple[str, str | None]] = {
    "posix": ("cloudcote.libfs.posix:PosixFs", None),
    "s3": ("cloudcote.backends.s3.driver:S3Fs", "s3"),
    "cassandra": ("cloudcote.backends.cassandra.driver:CassandraFs", "cassandra"),
    "sql": ("cloudcote.backends.sql.driver:SqlFs", "sql"),
    "postgresql": ("cloudcote.backends.sql.driver:SqlFs", "sql"),
    "mysql": ("cloudcote.backends.sql.driver:SqlFs", "sql"),
    "compress": ("cloudcote.libfs.compress:CompressFs", None),
    "cache": ("cloudcote.libfs.cache:CacheFs", None),
    "latency": ("cloudcote.libfs.latency:LatencyFs", None),
    "randomfail": ("cloudcote.libfs.randomfail:RandomFailFs", None),
    "metrics": ("cloudcote.libfs.metrics:MetricsFs", None),
    "retry": ("cloudcote.libfs.retry:RetryFs", None),
}
WRAPPERS = frozenset({"compress", "cache", "latency", "randomfail", "metrics", "retry"})
#: Drivers on a store reached over the network: a call may fail transiently, and a failed
#: write may have taken effect.  Their chains get the ``retry`` stage by default.
REMOTE_DRIVERS = frozenset({"s3", "cassandra", "sql", "postgresql", "mysql"})


# Settings has methods named str/int/float/bool; these aliases keep its annotations clear.
Text: TypeAlias = str
Int: TypeAlias = int
Float: TypeAlias = float
Bool: TypeAlias = bool


class Settings:
    """The settings of one stage; every accessor removes its key, and :meth:`finish`
    refuses whatever the stage did not take, naming the stage."""

    def __init__(self, stage: Text, values: Mapping[str, Text]) -> None:
        self.stage = stage
        self.values = dict(values)

    def error(self, key: Text, value: object, allowed: Text) -> FsInvalidSpec:
        return FsInvalidSpec(f"{self.stage}: {key}={value!r} is invalid: {allowed}")

    def str(
        self, key: Text, default: Text | None = None, *, required: Bool = False
    ) -> Text | None:
        if key in self.values:
            return self.values.pop(key)
        if required:
            raise FsInvalidSpec(f"{self.stage}: setting {key!r} is required")
        return default

    def int(self, key: Text, default: Int, *, minimum: Int = 0) -> Int:
        text = self.str(key)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise self.error(key, text, "expected an integer") from None
        if value < minimum:
            raise self.error(key, text, f"expected an integer >= {minimum}")
        return value

    def float(self, key: Text, default: Float) -> Float:
        text = self.str(key)
        if text is None:
            return default
        try:
            return float(text)
        except ValueError:
            raise self.error(key, text, "expected a number") from None

    def bool(self, key: Text, default: Bool) -> Bool:
        text = self.str(key)
        if text is None:
            return default
        if text.lower() in ("1", "yes", "true", "on"):
            return True
        if text.lower() in ("0", "no", "false", "off"):
            return False
        raise self.error(key, text, "expected yes or no")

    def choice(self, key: Text, default: Text, allowed: Sequence[Text]) -> Text:
        text = self.str(key, default) or default
        if text not in allowed:
            raise self.error(key, text, "expected one of " + ", ".join(allowed))
        return text

    def size(self, key: Text, default: Int) -> Int:
        text = self.str(key)
        return default if text is None else parse_size(text, self, key)

    def duration(self, key: Text, default: Float) -> Float:
        text = self.str(key)
        return default if text is None else parse_duration(text, self, key)

    def finish(self) -> None:
        if self.values:
            key = sorted(self.values)[0]
            raise FsInvalidSpec(f"{self.stage}: unknown setting {key!r}")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.I)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, settings: Settings | None = None, key: str = "size") -> int:
    """``4096``, ``64k``, ``64KB``, ``1.5MiB`` -> bytes (binary units)."""
    m = _SIZE.match(text)
    if not m:
        if settings:
            raise settings.error(key, text, "expected a size such as 4096, 64k or 16MB")
        raise FsInvalidSpec(f"invalid size {text!r}")
    unit = (m.group(2) or "").lower().rstrip("b").rstrip("i")
    return int(float(m.group(1)) * _UNITS[unit])


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m)?\s*$")


def parse_duration(text: str, settings: Settings | None = None, key: str = "delay") -> float:
    """``20ms``, ``1.5s``, ``250us``, a bare number is milliseconds -> seconds."""
    m = _DURATION.match(text)
    if not m:
        if settings:
            raise settings.error(key, text, "expected a duration such as 20ms or 1.5s")
        raise FsInvalidSpec(f"invalid duration {text!r}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, None: 1e-3}[m.group(2)]
    return float(m.group(1)) * scale


def _split_args(stage: str, arg: str) -> dict[str, str]:
    values: dict[str, str] = {}
    if not arg:
        return values
    for item in arg.split(","):
        key, eq, value = item.partition("=")
        if not eq:
            key, value = "", item
        key = key.strip()
        if key in values:
            raise FsInvalidSpec(f"{stage}: setting {key or 'positional'!r} given twice")
        values[key] = value
    return values


def parse_chain(spec: str | Sequence[Mapping[str, Any]]) -> list[tuple[str, dict[str, str]]]:
    """A chain spec as ``[(stage, settings), ...]``, outermost first, driver last."""
    if not isinstance(spec, str):
        return _parse_table_chain(spec)
    text = spec.strip()
    if not text:
        raise FsInvalidSpec("empty libfs chain")
    stages: list[tuple[str, dict[str, str]]] = []
    rest = text
    while True:
        name, sep, rest = rest.partition(":")
        name = name.strip()
        if name not in REGISTRY:
            known = ", ".join(sorted(REGISTRY))
            raise FsInvalidSpec(f"unknown libfs stage {name!r} in {text!r}; known: {known}")
        if name not in WRAPPERS:
            stages.append((name, _split_args(name, rest if sep else "")))
            return stages
        if not sep:
            raise FsInvalidSpec(f"{name}: wrapper needs a parent stage after it in {text!r}")
        nxt, sep2, after = rest.partition(":")
        if nxt.strip() in REGISTRY:
            stages.append((name, {}))
        else:
            if not sep2:
                raise FsInvalidSpec(f"{name}: wrapper needs a parent stage after {nxt!r}")
            stages.append((name, _split_args(name, nxt)))
            rest = after


def _parse_table_chain(spec: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict[str, str]]]:
    if not spec:
        raise FsInvalidSpec("empty libfs chain")
    stages = []
    for i, table in enumerate(spec):
        if not isinstance(table, Mapping) or "stage" not in table:
            raise FsInvalidSpec(f"libfs chain entry {i}: expected a table with a 'stage' key")
        name = str(table["stage"])
        if name not in REGISTRY:
            raise FsInvalidSpec(f"libfs chain entry {i}: unknown stage {name!r}")
        last = i == len(spec) - 1
        if (name in WRAPPERS) == last:
            what = "the last entry must be a driver" if last else f"{name} is not a wrapper"
            raise FsInvalidSpec(f"libfs chain entry {i}: {what}")
        values = {}
        for k, v in table.items():
            if k == "stage":
                continue
            values[k] = ("yes" if v else "no") if isinstance(v, bool) else str(v)
        stages.append((name, values))
    return stages


def with_defaults(stages: list[tuple[str, dict[str, str]]]) -> list[tuple[str, dict[str, str]]]:
    """The stages :func:`open_fs` opens for a parsed chain: a chain over a remote driver
    that names no ``retry`` stage gets one at its top, above every wrapper, so that a
    failure of any stage below (the store's, or one that ``randomfail`` injects) is
    retried and an uncertain create or append is resolved, never repeated blindly.  A
    ``retry`` stage with ``attempts=0`` (``retry:0:...``) is no stage at all: the way to
    turn the default off."""
    if any(name == "retry" for name, _ in stages):
        return [(name, values) for name, values in stages
                if name != "retry" or not _retry_off(values)]
    if stages[-1][0] in REMOTE_DRIVERS:
        return [("retry", {}), *stages]
    return list(stages)


def _retry_off(values: Mapping[str, str]) -> bool:
    attempts = values.get("attempts", values.get(""))
    return attempts is not None and attempts.strip().isdigit() and int(attempts) == 0


def stage_class(name: str) -> type[Fs]:
    """Import the class of stage ``name``, or explain which extra to install."""
    target, extra = REGISTRY[name]
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"; install it with: pip install 'cloudcote[{extra}]'" if extra else ""
        raise FsInvalidSpec(f"{name}: cannot load driver ({exc}){hint}") from exc
    cls: type[Fs] = getattr(module, class_name)
    return cls


async def open_fs(spec: str | Sequence[Mapping[str, Any]]) -> Fs:
    """Open a chain bottom-up, with its default stages (:func:`with_defaults`): the
    driver first, then each wrapper around it.  Every error is an :class:`FsInvalidSpec`
    (or the driver's connection error) naming the stage; a failed open closes whatever
    was already opened."""
    stages = with_defaults(parse_chain(spec))
    fs: Fs | None = None
    try:
        for name, values in reversed(stages):
            cls = stage_class(name)
            settings = Settings(name, values)
            fs = await cls.open(settings, fs)  # type: ignore[attr-defined]
        assert fs is not None
        return fs
    except BaseException:
        if fs is not None:
            await fs.close()
        raise
