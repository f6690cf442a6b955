"""Dovecot password schemes: ``{SCHEME}hash`` values, generated and verified.

Formats, names and defaults follow Dovecot's
https://doc.dovecot.org/main/core/config/auth/schemes.html and its
``src/lib-auth/password-scheme*.c``: scheme names are case-insensitive, a ``.B64``/``.HEX``
suffix names the encoding, and a value without ``{...}`` takes the passdb's default scheme
(``CRYPT`` for passwd-file). Crypt-style hashes come from libpass (import name ``passlib``)
with the ``bcrypt`` and ``argon2-cffi`` backends; the stdlib ``crypt`` module is not used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from passlib.hash import argon2, bcrypt, des_crypt, md5_crypt, sha256_crypt, sha512_crypt

from .errors import AuthConfigError, InvalidHash, UnknownScheme

#: The scheme new passwords get unless told otherwise (Dovecot's ``doveadm pw`` default).
DEFAULT_SCHEME = "SHA512-CRYPT"
#: passwd-file's ``default_password_scheme``: a value without ``{...}`` is CRYPT.
DEFAULT_PASS_SCHEME = "CRYPT"

#: Default work factors. SHA-crypt and Argon2 match Dovecot's (libc/libsodium defaults), so a
#: generated value is what ``doveadm pw`` prints; bcrypt uses cost 10 instead of Dovecot's 5.
SHA_CRYPT_ROUNDS = 5000
BLF_CRYPT_COST = 10
ARGON2I_PARAMS = {"time_cost": 4, "memory_cost": 32768, "parallelism": 1}
ARGON2ID_PARAMS = {"time_cost": 3, "memory_cost": 65536, "parallelism": 1}

# crypt_blowfish, and so Dovecot's BLF-CRYPT, uses only the first 72 bytes of a password.
_BCRYPT_MAX_BYTES = 72
_SSHA_SALT_BYTES = 8  # Dovecot writes 4; any length verifies
_BCRYPT_RE = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")
_DES_RE = re.compile(r"[./0-9A-Za-z]{13}")
_ARGON2_RE = re.compile(r"\$argon2(?:i|id)\$")
_HEX_RE = re.compile(r"(?:[0-9a-fA-F]{2})*")
_ENCODINGS = {"B64": "base64", "BASE64": "base64", "HEX": "hex"}


@dataclass(frozen=True)
class _Scheme:
    name: str
    encoding: str  # default encoding of the stored value: "none", "base64" or "hex"
    verify: Callable[[bytes, bytes], bool]  # (password, decoded value) -> match
    check: Callable[[bytes], None]  # raises InvalidHash if the decoded value is malformed
    generate: Callable[[bytes, int | None], bytes] | None = None  # None: verify only
    raw_len: int = 0  # exact decoded length, 0 if it varies


# -- crypt(3)-style values ------------------------------------------------------------------


def _crypt_handler(value: str) -> Any:
    """The libpass handler for a crypt(3) string, as glibc/libxcrypt would pick it."""
    if _BCRYPT_RE.fullmatch(value):
        return bcrypt
    if value.startswith("$6$"):
        return sha512_crypt
    if value.startswith("$5$"):
        return sha256_crypt
    if value.startswith("$1$"):
        return md5_crypt
    if _DES_RE.fullmatch(value):
        return des_crypt
    if value.startswith(("$y$", "$gy$", "$7$")):
        raise InvalidHash("yescrypt/scrypt hashes are not supported; set the password again "
                          "with SHA512-CRYPT or ARGON2ID")
    if value.startswith("$2"):
        raise InvalidHash("not a bcrypt hash this server can verify ($2a$, $2b$ or $2y$)")
    raise InvalidHash("not a crypt(3) hash ($6$, $5$, $2y$, $1$ or DES)")


def _parse_crypt(raw: bytes) -> tuple[Any, str]:
    try:
        value = raw.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidHash("crypt hash contains non-ASCII bytes") from None
    handler = _crypt_handler(value)
    try:
        handler.from_string(value)
    except ValueError as exc:
        raise InvalidHash(f"malformed {handler.name} hash: {exc}") from None
    return handler, value


def _passlib_verify(handler: Any, password: bytes, value: str) -> bool:
    if handler is bcrypt:
        password = password[:_BCRYPT_MAX_BYTES]
    return bool(handler.verify(password, value))


def _check_crypt(raw: bytes) -> None:
    if raw:  # an empty value is valid and never matches, as in Dovecot
        _parse_crypt(raw)


def _verify_crypt(password: bytes, raw: bytes) -> bool:
    if not raw:
        return False
    handler, value = _parse_crypt(raw)
    return _passlib_verify(handler, password, value)


def _check_blf(raw: bytes) -> None:
    if raw and not _BCRYPT_RE.fullmatch(raw.decode("ascii", "replace")):
        raise InvalidHash("not a bcrypt hash ($2y$NN$...)")
    _check_crypt(raw)


def _verify_blf(password: bytes, raw: bytes) -> bool:
    _check_blf(raw)
    return _verify_crypt(password, raw)


def _check_argon2(raw: bytes) -> None:
    if not raw:
        return
    value = raw.decode("ascii", "replace")
    if not _ARGON2_RE.match(value):
        raise InvalidHash("not an Argon2 hash ($argon2id$ or $argon2i$)")
    try:
        argon2.from_string(value)
    except ValueError as exc:
        raise InvalidHash(f"malformed Argon2 hash: {exc}") from None


def _verify_argon2(password: bytes, raw: bytes) -> bool:
    # Like libsodium's crypto_pwhash_str_verify, the variant comes from the hash itself.
    _check_argon2(raw)
    return bool(raw) and bool(argon2.verify(password, raw.decode("ascii")))


def _gen_sha_crypt(handler: Any) -> Callable[[bytes, int | None], bytes]:
    def generate(password: bytes, rounds: int | None) -> bytes:
        n = min(max(rounds or SHA_CRYPT_ROUNDS, 1000), 999_999_999)
        # rounds=5000 is implicit and not written, exactly like Dovecot's output.
        return str(handler.using(rounds=n, salt_size=16).hash(password)).encode("ascii")

    return generate


def _gen_blf(password: bytes, rounds: int | None) -> bytes:
    cost = min(max(rounds or BLF_CRYPT_COST, 4), 31)
    hashed = bcrypt.using(ident="2y", rounds=cost).hash(password[:_BCRYPT_MAX_BYTES])
    return str(hashed).encode("ascii")


def _gen_argon2(kind: str, params: dict[str, int]) -> Callable[[bytes, int | None], bytes]:
    def generate(password: bytes, rounds: int | None) -> bytes:
        cost = dict(params, time_cost=max(rounds or params["time_cost"], 1))
        return str(argon2.using(type=kind, salt_size=16, **cost).hash(password)).encode("ascii")

    return generate


# -- PLAIN and plain digests ---------------------------------------------------------------


def _verify_plain(password: bytes, raw: bytes) -> bool:
    # Compare digests so that the comparison time does not depend on the lengths either.
    return hmac.compare_digest(hashlib.sha256(password).digest(), hashlib.sha256(raw).digest())


def _no_check(raw: bytes) -> None:
    return None


def _digest(alg: str) -> tuple[Callable[[bytes, bytes], bool], Callable[[bytes, int | None],
                                                                           bytes]]:
    def generate(password: bytes, rounds: int | None) -> bytes:
        return hashlib.new(alg, password).digest()

    def verify(password: bytes, raw: bytes) -> bool:
        return hmac.compare_digest(hashlib.new(alg, password).digest(), raw)

    return verify, generate


def _salted(alg: str) -> tuple[Callable[[bytes, bytes], bool], Callable[[bytes], None],
                               Callable[[bytes, int | None], bytes]]:
    size = hashlib.new(alg).digest_size

    def check(raw: bytes) -> None:
        if len(raw) <= size:
            raise InvalidHash(f"salted {alg} value is too short ({len(raw)} bytes)")

    def verify(password: bytes, raw: bytes) -> bool:
        check(raw)
        digest = hashlib.new(alg, password + raw[size:]).digest()
        return hmac.compare_digest(digest, raw[:size])

    def generate(password: bytes, rounds: int | None) -> bytes:
        salt = os.urandom(_SSHA_SALT_BYTES)
        return hashlib.new(alg, password + salt).digest() + salt

    return verify, check, generate


def _build() -> dict[str, _Scheme]:
    table: list[_Scheme] = []
    for name in ("PLAIN", "CLEARTEXT", "CLEAR"):
        table.append(_Scheme(name, "none", _verify_plain, _no_check,
                             lambda p, r: p))
    for name in ("CRYPT", "MD5-CRYPT", "MD5"):  # verify only: DES and MD5-crypt are weak
        table.append(_Scheme(name, "none", _verify_crypt, _check_crypt))
    # Dovecot verifies every crypt-family scheme with crypt(), whatever the hash prefix.
    table.append(_Scheme("SHA512-CRYPT", "none", _verify_crypt, _check_crypt,
                         _gen_sha_crypt(sha512_crypt)))
    table.append(_Scheme("SHA256-CRYPT", "none", _verify_crypt, _check_crypt,
                         _gen_sha_crypt(sha256_crypt)))
    table.append(_Scheme("BLF-CRYPT", "none", _verify_blf, _check_blf, _gen_blf))
    table.append(_Scheme("ARGON2ID", "none", _verify_argon2, _check_argon2,
                         _gen_argon2("ID", ARGON2ID_PARAMS)))
    table.append(_Scheme("ARGON2I", "none", _verify_argon2, _check_argon2,
                         _gen_argon2("I", ARGON2I_PARAMS)))
    table.append(_Scheme("ARGON2", "none", _verify_argon2, _check_argon2,
                         _gen_argon2("ID", ARGON2ID_PARAMS)))
    for name, alg, writable in (("SHA512", "sha512", True), ("SHA256", "sha256", True),
                                ("SHA1", "sha1", False), ("SHA", "sha1", False)):
        verify, generate = _digest(alg)
        table.append(_Scheme(name, "base64", verify, _no_check, generate if writable else None,
                             raw_len=hashlib.new(alg).digest_size))
    for name, alg, encoding in (("PLAIN-MD5", "md5", "hex"), ("LDAP-MD5", "md5", "base64")):
        verify, _ = _digest(alg)
        table.append(_Scheme(name, encoding, verify, _no_check, raw_len=16))
    for name, alg, writable in (("SSHA512", "sha512", True), ("SSHA256", "sha256", True),
                                ("SSHA", "sha1", False)):
        verify, check, generate = _salted(alg)
        table.append(_Scheme(name, "base64", verify, check, generate if writable else None))
    return {s.name: s for s in table}


_SCHEMES = _build()

#: Every scheme name ``verify_password`` understands (each also with ``.B64``/``.HEX``).
SCHEMES: tuple[str, ...] = tuple(_SCHEMES)
#: The schemes ``hash_password`` writes; the others are accepted for verification only.
GENERATE_SCHEMES: tuple[str, ...] = tuple(n for n, s in _SCHEMES.items() if s.generate)


# -- parsing stored values -------------------------------------------------------------------


def _lookup(name: str) -> tuple[_Scheme, str, bool, str]:
    """(scheme, encoding, encoding given explicitly, canonical name) for ``NAME[.ENC]``."""
    base, dot, suffix = name.partition(".")
    scheme = _SCHEMES.get(base.upper())
    if scheme is None:
        raise UnknownScheme(name)
    if not dot:
        return scheme, scheme.encoding, False, scheme.name
    encoding = _ENCODINGS.get(suffix.upper())
    if encoding is None:
        raise UnknownScheme(name)
    return scheme, encoding, True, f"{scheme.name}.{suffix.upper()}"


def _split(stored: str, default_scheme: str) -> tuple[str, str]:
    if stored.startswith("{"):
        end = stored.find("}")
        if end != -1:
            return stored[1:end], stored[end + 1:]
    return default_scheme, stored


def _decode(scheme: _Scheme, encoding: str, explicit: bool, data: str) -> bytes:
    """The raw value, decoded as Dovecot's password_decode() does (hex is guessed by length)."""
    if encoding == "none":
        return data.encode("utf-8", "surrogateescape")
    raw: bytes | None = None
    guess_hex = not explicit and scheme.raw_len and len(data) == scheme.raw_len * 2
    if encoding == "hex" or guess_hex:
        if _HEX_RE.fullmatch(data):
            raw = bytes.fromhex(data)
        elif not guess_hex:
            raise InvalidHash(f"{scheme.name} value is not valid hex")
    if raw is None:
        try:
            raw = base64.b64decode(data.encode("ascii", "replace"), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidHash(f"{scheme.name} value is not valid base64") from None
    if scheme.raw_len and len(raw) != scheme.raw_len:
        raise InvalidHash(f"{scheme.name} value decodes to {len(raw)} bytes, "
                          f"not {scheme.raw_len}")
    return raw


def _parse(stored: str, default_scheme: str) -> tuple[_Scheme, str, bytes]:
    name, data = _split(stored, default_scheme)
    scheme, encoding, explicit, canonical = _lookup(name)
    return scheme, canonical, _decode(scheme, encoding, explicit, data)


# -- public API ------------------------------------------------------------------------------


def check_stored_password(stored: str, *, default_scheme: str = DEFAULT_PASS_SCHEME) -> str:
    """Validate a stored ``{SCHEME}value``; return the canonical scheme name.

    Raises ``UnknownScheme`` for a scheme this server lacks and ``InvalidHash`` for a value
    that cannot be verified (so a passwd-file reports it at load, not at the first login).
    """
    scheme, canonical, raw = _parse(stored, default_scheme)
    scheme.check(raw)
    return canonical


def scheme_of(stored: str, *, default_scheme: str = DEFAULT_PASS_SCHEME) -> str:
    """The canonical scheme name of a stored value, without checking the value."""
    name, _ = _split(stored, default_scheme)
    return _lookup(name)[3]


def hash_password(password: str, scheme: str = DEFAULT_SCHEME, *,
                  rounds: int | None = None) -> str:
    """``{SCHEME}value`` for ``password``, as ``doveadm pw -s SCHEME [-r ROUNDS]`` prints it.

    ``rounds`` is the SHA-crypt round count, the bcrypt cost or the Argon2 time cost.
    Raises ``UnknownScheme``, ``AuthConfigError`` for a verify-only scheme such as CRYPT,
    and ``ValueError`` for a password containing NUL (Dovecot cannot take it either).
    """
    found, encoding, _, canonical = _lookup(scheme)
    if found.generate is None:
        raise AuthConfigError(f"password scheme {canonical!r} is accepted for verification "
                              f"only; use one of {', '.join(GENERATE_SCHEMES)}")
    if "\0" in password:
        raise ValueError("a password cannot contain NUL")
    raw = found.generate(password.encode("utf-8"), rounds)
    if encoding == "base64":
        value = base64.b64encode(raw).decode("ascii")
    elif encoding == "hex":
        value = raw.hex()
    else:
        value = raw.decode("utf-8", "surrogateescape")
    return f"{{{canonical}}}{value}"


def verify_password(stored: str, password: str, *,
                    default_scheme: str = DEFAULT_PASS_SCHEME) -> bool:
    """True if ``password`` matches the stored ``{SCHEME}value``, as Dovecot decides it.

    A value without ``{...}`` uses ``default_scheme`` (CRYPT, as passwd-file's
    default_password_scheme). An empty password, or one with NUL, never matches. Raises
    ``UnknownScheme`` or ``InvalidHash`` when the stored value, not the password, is at fault.
    """
    scheme, _, raw = _parse(stored, default_scheme)
    try:
        secret = password.encode("utf-8")
    except UnicodeEncodeError:
        return False
    if not secret or b"\0" in secret:
        scheme.check(raw)
        return False
    return scheme.verify(secret, raw)
