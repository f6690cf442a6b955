"""Errors of the authentication layer; protocol-free, each one line of text."""

from __future__ import annotations


class AuthError(Exception):
    """Base of every error raised by ``cloudcote.core.auth``."""


class AuthConfigError(AuthError, ValueError):
    """A passdb spec, a scheme name or a stored hash is wrong: an administrator must fix it."""


class UnknownScheme(AuthConfigError):
    """A ``{SCHEME}`` prefix names no scheme this server knows."""

    def __init__(self, scheme: str) -> None:
        self.scheme = scheme
        super().__init__(f"unknown password scheme {scheme!r}")


class InvalidHash(AuthConfigError):
    """A stored password is not a well-formed value of its scheme."""


class PasswdFileError(AuthConfigError):
    """A passwd-file cannot be read or has a bad line; ``str()`` is ``PATH:LINENO: problem``."""


class UserExists(AuthError):
    """``add_user`` found the user already in the passwd-file."""


class UserNotFound(AuthError, LookupError):
    """``set_password`` / ``delete_user`` did not find the user in the passwd-file."""


class PassDbUnavailable(AuthError):
    """The password database cannot answer now (server down, timeout, pool closed): the
    login gets a temporary failure, never a "wrong password"."""


class SqlSettingError(AuthConfigError):
    """One setting of the SQL passdb is wrong; ``key`` names it, ``problem`` says why."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")


class UserdbError(AuthConfigError):
    """A userdb field of one user (quota rule, mail location) cannot be used."""
