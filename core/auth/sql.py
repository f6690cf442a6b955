"""Dovecot's ``passdb sql``: users and password hashes in PostgreSQL or MySQL/MariaDB.

https://doc.dovecot.org/2.3/configuration_manual/authentication/sql/

One password query, written as in Dovecot::

    SELECT username AS user, password, home AS userdb_home,
           quota_rule AS userdb_quota_rule
      FROM users WHERE username = '%u'

The variables ``%u`` (the login name), ``%n`` (its part before ``@``), ``%d`` (its part
after ``@``, or empty) and ``%r`` (the client's IP, or empty) -- also spelled
``%{user}``, ``%{username}``, ``%{domain}``, ``%{rip}``, with ``%L`` in front for the lower
case value (``%Lu``) -- never become SQL text.  The query is compiled once, when the passdb
is built: a variable alone in a string literal (``'%u'``) or bare (``%u``) becomes a
placeholder, a variable inside a longer literal (``'%n@example.com'``) becomes a
``concat()`` of placeholders and literal pieces, and the values travel as parameters of
the client library (asyncpg: the server's bind parameters; aiomysql: the library's
escaping of each argument).  ``%%`` is a literal ``%``.

The result must have a ``password`` column; ``user``, if present, is the user's canonical
name (it replaces the login name, so that a case-insensitive collation cannot give one
user two mail trees).  Every other column is an extra field with its column name
(``userdb_home``, ``userdb_quota_rule``, ``nologin``, ``allow_nets`` ...).  A NULL column
is no field at all, and so is a boolean false.

The connection pool opens at the first login and closes with ``close()``.  A database that
cannot answer raises ``PassDbUnavailable``; a query the database refuses raises
``AuthConfigError``; both are a temporary failure for the client, never a wrong password.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from cloudcote.backends.sql import client
from cloudcote.backends.sql.client import (
    CLIENTS,
    Dsn,
    DsnError,
    ErrorKind,
    classify,
    close_pool,
    open_pool,
)
from cloudcote.backends.sql.client import redact_dsn as redact_dsn  # the config's

from .errors import (
    AuthConfigError,
    AuthError,
    InvalidHash,
    PassDbUnavailable,
    SqlSettingError,
    UnknownScheme,
)
from .schemes import DEFAULT_PASS_SCHEME, check_stored_password, verify_password
from .verify import UserEntry, check_login, dummy_hash, parse_allow_nets

#: Variable names (short and long spellings) -> what they stand for.
VARIABLES = {"u": "user", "n": "username", "d": "domain", "r": "rip",
             "user": "user", "username": "username", "domain": "domain", "rip": "rip",
             "remote_ip": "rip"}
#: The longest login name sent to the database; longer ones are unknown users.
MAX_USER_LENGTH = 1024

_VARIABLE_RE = re.compile(r"%(?:%|(L?)([a-zA-Z])|(L?)\{([a-z_]+)\})")
_KNOWN = "%u, %n, %d, %r (or %{user}, %{username}, %{domain}, %{rip}; %Lu for lower case)"


# -- settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SqlSettings:
    """What ``[auth.sql]`` configures; ``spec()`` is the ``sql:...`` passdb spec."""

    #: ``postgresql://user:password@host:port/database`` or ``mysql://...`` (``mariadb://``).
    connect: str
    password_query: str
    #: Connections per process, opened as logins need them.
    pool_size: int = 5
    #: Seconds for connecting and for one query.
    timeout: float = 5.0
    #: The scheme of stored passwords that have no ``{SCHEME}`` prefix.
    default_pass_scheme: str = DEFAULT_PASS_SCHEME

    def dialect(self) -> str:
        return parse_dsn(self.connect).dialect

    def validate(self) -> None:
        """Raise ``SqlSettingError`` naming the first bad setting."""
        dsn = parse_dsn(self.connect)
        compile_query(self.password_query, dsn.dialect)
        if isinstance(self.pool_size, bool) or not 1 <= self.pool_size <= 1000:
            raise SqlSettingError("pool_size", "expected a number of connections, 1-1000")
        if isinstance(self.timeout, bool) or not 0 < self.timeout <= 3600:
            raise SqlSettingError("timeout", "expected seconds, more than 0 and at most 3600")
        try:
            check_stored_password(f"{{{self.default_pass_scheme}}}x")
        except UnknownScheme as exc:
            raise SqlSettingError("default_pass_scheme", str(exc)) from None
        except InvalidHash:
            pass  # a known scheme: "x" is just not one of its values

    def spec(self) -> str:
        """``sql:connect=... password_query='...' ...``, the form ``open_passdb`` reads."""
        words = [f"{f.name}={shlex.quote(str(getattr(self, f.name)))}" for f in fields(self)]
        return "sql:" + " ".join(words)

    @classmethod
    def from_args(cls, args: str) -> SqlSettings:
        """The settings from the text after ``sql:`` (shell-quoted ``key=value`` words)."""
        try:
            words = shlex.split(args)
        except ValueError as exc:
            raise AuthConfigError(f"cannot split the settings: {exc}") from None
        known = [f.name for f in fields(cls)]
        values: dict[str, str] = {}
        for word in words:
            key, eq, value = word.partition("=")
            if not eq or key not in known:
                raise AuthConfigError(f"unknown setting {key!r}; known: {', '.join(known)}")
            values[key] = value
        for key in ("connect", "password_query"):
            if not values.get(key):
                raise SqlSettingError(key, "missing")
        kwargs: dict[str, Any] = {"connect": values["connect"],
                                  "password_query": values["password_query"]}
        try:
            if "pool_size" in values:
                kwargs["pool_size"] = int(values["pool_size"])
            if "timeout" in values:
                kwargs["timeout"] = float(values["timeout"])
        except ValueError as exc:
            raise AuthConfigError(f"not a number: {exc}") from None
        if "default_pass_scheme" in values:
            kwargs["default_pass_scheme"] = values["default_pass_scheme"]
        settings = cls(**kwargs)
        settings.validate()
        return settings


def parse_dsn(dsn: str) -> Dsn:
    """The ``connect`` setting parsed; raises ``SqlSettingError("connect", ...)``."""
    try:
        return client.parse_dsn(dsn)
    except DsnError as exc:
        raise SqlSettingError("connect", str(exc)) from None


# -- the query -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variable:
    name: str  # user, username, domain, rip
    lower: bool = False

    def value(self, user: str, remote_ip: str | None) -> str:
        if self.name == "user":
            text = user
        elif self.name == "username":
            text = user.partition("@")[0]
        elif self.name == "domain":
            text = user.partition("@")[2]
        else:
            text = remote_ip or ""
        return text.lower() if self.lower else text


@dataclass(frozen=True)
class CompiledQuery:
    """The query text with placeholders, and the variable behind each parameter."""

    text: str
    params: tuple[Variable, ...]
    typed: bool = False

    def values(self, user: str, remote_ip: str | None) -> tuple[str, ...]:
        return tuple(v.value(user, remote_ip) for v in self.params)


def _split_variables(text: str) -> list[str | Variable]:
    """Raw text pieces (``%%`` kept as written) and variables, in order."""
    pieces: list[str | Variable] = []
    start = pos = 0
    while True:
        pos = text.find("%", pos)
        if pos == -1:
            break
        match = _VARIABLE_RE.match(text, pos)
        name = None
        if match is not None and match.group(0) != "%%":
            name = VARIABLES.get(match.group(2) or match.group(4) or "")
        if match is None or (match.group(0) != "%%" and name is None):
            shown = match.group(0) if match is not None else text[pos:pos + 2]
            raise SqlSettingError("password_query", f"unknown variable {shown!r}; known: "
                                  f"{_KNOWN}; write %% for a literal %")
        assert match is not None
        if name is not None:
            if pos > start:
                pieces.append(text[start:pos])
            pieces.append(Variable(name, bool(match.group(1) or match.group(3))))
            start = match.end()
        pos = match.end()
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def _scan(query: str, dialect: str) -> list[tuple[str, str]]:
    """``(quote, raw text)`` segments: quote ``''`` outside literals, else ``'`` or ``"``
    with the literal's content as written."""
    segments: list[tuple[str, str]] = []
    i = start = 0
    while i < len(query):
        char = query[i]
        if char not in "'\"":
            i += 1
            continue
        if i > start:
            segments.append(("", query[start:i]))
        j = i + 1
        while True:
            if j >= len(query):
                raise SqlSettingError("password_query", f"unterminated string literal "
                                      f"starting at {query[i:i + 20]!r}")
            if dialect == "mysql" and query[j] == "\\":
                j += 2
                continue
            if query[j] == char:
                if query[j + 1:j + 2] == char:  # a doubled quote is one quote character
                    j += 2
                    continue
                break
            j += 1
        segments.append((char, query[i + 1:j]))
        i = start = j + 1
    if start < len(query):
        segments.append(("", query[start:]))
    return segments


def compile_query(query: str, dialect: str, *, typed: bool = False) -> CompiledQuery:
    """The password query for ``dialect`` with every variable a parameter; raises
    ``SqlSettingError("password_query", ...)`` for an unknown variable or a bad literal.

    PostgreSQL infers a parameter's type from where it stands; where it cannot (an argument
    of ``concat()``), ``typed=True`` writes every parameter as ``$n::text``.  Bare is the
    default, so that a comparison with, say, a ``citext`` column keeps that column's rules.
    """
    if not query.strip():
        raise SqlSettingError("password_query", "empty query")
    params: list[Variable] = []

    def placeholder(var: Variable, *, as_text: bool = False) -> str:
        if dialect == "mysql":
            params.append(var)
            return "%s"
        if var not in params:
            params.append(var)
        mark = f"${params.index(var) + 1}"
        return f"{mark}::text" if as_text or typed else mark

    def raw(text: str) -> str:
        # aiomysql formats the text with %, so a literal % is written %% there.
        return text if dialect == "mysql" else text.replace("%%", "%")

    out: list[str] = []
    for quote, text in _scan(query, dialect):
        pieces = _split_variables(text)
        if not quote:
            out.extend(placeholder(p) if isinstance(p, Variable) else raw(p) for p in pieces)
        elif not any(isinstance(p, Variable) for p in pieces):
            out.append(quote + raw(text) + quote)
        elif len(pieces) == 1:
            out.append(placeholder(pieces[0]))  # type: ignore[arg-type]
        else:
            if dialect == "mysql" and any(
                    isinstance(p, str) and (len(p) - len(p.rstrip("\\"))) % 2 for p in pieces):
                raise SqlSettingError("password_query", f"a backslash escapes the variable in "
                                      f"{quote}{text}{quote}")
            parts = [placeholder(p, as_text=True) if isinstance(p, Variable)
                     else quote + raw(p) + quote for p in pieces]
            out.append(("CONCAT(" if dialect == "mysql" else "concat(") + ", ".join(parts) + ")")
    if not any(v.name in ("user", "username") for v in params):
        raise SqlSettingError("password_query", "the query must select by the login name: "
                              "use '%u' (or '%n')")
    return CompiledQuery("".join(out), tuple(params), typed)


# -- the passdb ------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    """A column value as an extra field's text; None: no field."""
    if value is None or value is False:
        return None
    if value is True:
        return "y"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Outcome:
    """How the passdb treats an exception of the client library."""

    LOST = "lost"  # a pooled connection went away: one more try on a fresh one
    DOWN = "down"  # the server cannot be reached or refuses us: PassDbUnavailable
    QUERY = "query"  # the server refused the query: AuthConfigError


#: What each kind of client error is to a login.
_OUTCOMES = {
    ErrorKind.LOST: _Outcome.LOST,
    ErrorKind.UNREACHABLE: _Outcome.DOWN,
    ErrorKind.CONFLICT: _Outcome.DOWN,
    ErrorKind.AUTH: _Outcome.DOWN,
    ErrorKind.NO_DATABASE: _Outcome.DOWN,
    ErrorKind.UNKNOWN: _Outcome.DOWN,
    ErrorKind.PERMISSION: _Outcome.QUERY,
    ErrorKind.NO_TABLE: _Outcome.QUERY,
    ErrorKind.REFUSED: _Outcome.QUERY,
}


class SqlPassDb:
    """Dovecot's ``passdb sql`` on PostgreSQL (asyncpg) or MySQL/MariaDB (aiomysql).

    See the module docstring for the query, its variables and the result columns.  A user
    the query does not find costs a password verification all the same, so the answer
    time does not tell who exists.  The pool belongs to the event loop of the first login.
    """

    def __init__(self, settings: SqlSettings) -> None:
        settings.validate()
        self.settings = settings
        self.dsn = parse_dsn(settings.connect)
        self.query = compile_query(settings.password_query, self.dsn.dialect)
        library = CLIENTS[self.dsn.dialect]
        if importlib.util.find_spec(library) is None:
            raise AuthConfigError(f"the {self.dsn.dialect} passdb needs {library}; install "
                                  "it with: pip install 'cloudcote[sql]'")
        self._pool: Any = None
        self._opening: asyncio.Future[Any] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SqlPassDb({self.dsn.where()})"

    # -- pool ---------------------------------------------------------------------------

    async def _open_pool(self) -> Any:
        return await open_pool(self.dsn, min_size=0, max_size=self.settings.pool_size,
                               timeout=self.settings.timeout,
                               application_name="cloudcote-auth")

    async def _get_pool(self) -> Any:
        if self._pool is not None:
            return self._pool
        if self._closed:
            raise PassDbUnavailable(f"sql passdb {self.dsn.where()}: closed")
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open_pool())
        opening = self._opening
        try:
            pool = await asyncio.shield(opening)
        except Exception:
            if self._opening is opening:
                self._opening = None  # the next login tries again
            raise
        if self._closed:
            raise PassDbUnavailable(f"sql passdb {self.dsn.where()}: closed")
        self._pool = pool
        return pool

    async def close(self) -> None:
        """Close the pool; later logins raise ``PassDbUnavailable``."""
        self._closed = True
        opening, self._opening = self._opening, None
        pool, self._pool = self._pool, None
        if opening is not None:
            if not opening.done():
                opening.cancel()
                await asyncio.wait([opening])
            if pool is None and not opening.cancelled() and opening.exception() is None:
                pool = opening.result()
        if pool is None:
            return
        await close_pool(self.dsn.dialect, pool, self.settings.timeout)

    # -- query --------------------------------------------------------------------------

    async def _run(self, pool: Any, values: Sequence[str]) -> tuple[list[str], list[Any]]:
        timeout = self.settings.timeout
        async with asyncio.timeout(timeout * 2):  # a connect, then the query
            if self.dsn.dialect == "postgresql":
                async with pool.acquire(timeout=timeout) as conn:
                    rows = await conn.fetch(self.query.text, *values, timeout=timeout)
                    return (list(rows[0].keys()) if rows else []), list(rows)
            async with pool.acquire() as conn:
                try:
                    async with asyncio.timeout(timeout), conn.cursor() as cur:
                        await cur.execute(self.query.text, tuple(values))
                        mysql_rows = list(await cur.fetchall())
                        columns = [d[0] for d in cur.description or ()]
                except BaseException:
                    conn.close()  # cut short mid-reply: never back into the pool
                    raise
                return columns, mysql_rows

    async def _fetch(self, values: Sequence[str]) -> tuple[list[str], list[Any]]:
        retried = False
        while True:
            try:
                pool = await self._get_pool()
                return await self._run(pool, values)
            except AuthError:
                raise
            except Exception as exc:
                outcome = _OUTCOMES[classify(self.dsn.dialect, exc)]
                if outcome == _Outcome.LOST and not retried:
                    retried = True
                    continue
                if getattr(exc, "sqlstate", None) == "42P18" and not self.query.typed:
                    # "could not determine data type of parameter": say text, once for all.
                    self.query = compile_query(self.settings.password_query, self.dsn.dialect,
                                               typed=True)
                    continue
                if outcome == _Outcome.QUERY:
                    raise AuthConfigError(f"sql passdb {self.dsn.where()}: password_query "
                                          f"failed: {_describe(exc)}") from exc
                raise PassDbUnavailable(f"sql passdb {self.dsn.where()}: "
                                        f"{_describe(exc)}") from exc

    def _entry(self, login: str, columns: list[str], row: Sequence[Any]) -> UserEntry | None:
        names = [c.lower() for c in columns]
        if "password" not in names:
            raise AuthConfigError(f"sql passdb {self.dsn.where()}: password_query returned "
                                  f"no 'password' column (columns: {', '.join(names)})")
        extra: dict[str, str] = {}
        for name, value in zip(names, row, strict=True):
            text = _text(value)
            if text is not None:
                extra[name] = text
        stored = extra.pop("password", "")
        user = extra.pop("user", "") or login
        if not stored:
            return None
        if not (stored.startswith("{") and "}" in stored):
            stored = f"{{{self.settings.default_pass_scheme}}}{stored}"
        if "allow_nets" in extra:
            try:
                parse_allow_nets(extra["allow_nets"])
            except ValueError as exc:
                raise AuthConfigError(f"sql passdb: user {user!r}: {exc}") from None
        return UserEntry(user=user, password=stored, extra=extra)

    async def user_lookup(self, user: str) -> UserEntry | None:
        """The user's entry from ``password_query`` (no password check), or None."""
        if not user or len(user) > MAX_USER_LENGTH or "\0" in user:
            return None
        return await self._lookup(user, None)

    async def _lookup(self, user: str, remote_ip: str | None) -> UserEntry | None:
        columns, rows = await self._fetch(self.query.values(user, remote_ip))
        if len(rows) > 1:
            raise AuthConfigError(f"sql passdb {self.dsn.where()}: user {user!r} exists "
                                  f"{len(rows)} times in the password_query result")
        return self._entry(user, columns, rows[0]) if rows else None

    async def authenticate(self, user: str, password: str, *,
                           remote_ip: str | None = None) -> UserEntry | None:
        """The user's entry if ``password`` is right and the login allowed, else None.

        Raises ``PassDbUnavailable`` if the database cannot answer, ``AuthConfigError`` if
        the query or a stored value is wrong (both: a temporary failure for the client).
        """
        if not user or len(user) > MAX_USER_LENGTH or "\0" in user:
            await asyncio.to_thread(verify_password, dummy_hash(), password)
            return None
        entry = await self._lookup(user, remote_ip)
        if entry is None:
            await asyncio.to_thread(verify_password, dummy_hash(), password)
            return None
        return await asyncio.to_thread(check_login, entry, password, remote_ip)
