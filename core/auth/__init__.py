"""Authentication: Dovecot-style password schemes and password databases.

See ``schemes`` (``{SCHEME}hash`` values) and ``passdb`` (passwd-file, static, ``open_passdb``).
"""

from __future__ import annotations

from .errors import (
    AuthConfigError,
    AuthError,
    InvalidHash,
    PasswdFileError,
    UnknownScheme,
    UserExists,
    UserNotFound,
)
from .passdb import (
    PassDb,
    PasswdFile,
    StaticPassDb,
    UserEntry,
    add_user,
    check_user_name,
    delete_user,
    list_users,
    open_passdb,
    set_password,
)
from .schemes import (
    DEFAULT_PASS_SCHEME,
    DEFAULT_SCHEME,
    GENERATE_SCHEMES,
    SCHEMES,
    check_stored_password,
    hash_password,
    verify_password,
)

__all__ = [
    "DEFAULT_PASS_SCHEME",
    "DEFAULT_SCHEME",
    "GENERATE_SCHEMES",
    "SCHEMES",
    "AuthConfigError",
    "AuthError",
    "InvalidHash",
    "PassDb",
    "PasswdFile",
    "PasswdFileError",
    "StaticPassDb",
    "UnknownScheme",
    "UserEntry",
    "UserExists",
    "UserNotFound",
    "add_user",
    "check_stored_password",
    "check_user_name",
    "delete_user",
    "hash_password",
    "list_users",
    "open_passdb",
    "set_password",
    "verify_password",
]
