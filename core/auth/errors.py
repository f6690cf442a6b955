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
