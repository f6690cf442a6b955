"""Authentication: Dovecot-style password schemes, password databases and userdb fields.

See ``schemes`` (``{SCHEME}hash`` values), ``verify`` (the login check every passdb makes),
``passdb`` (passwd-file, static, ``open_passdb``), ``sql`` (the SQL passdb), ``userdb`` (home,
quota and mail store of a user) and ``penalty`` (the delay that failed logins earn).
"""

from __future__ import annotations

from .errors import (
    AuthConfigError,
    AuthError,
    InvalidHash,
    PassDbUnavailable,
    PasswdFileError,
    SqlSettingError,
    UnknownScheme,
    UserdbError,
    UserExists,
    UserNotFound,
)
from .passdb import (
    PassDb,
    PasswdFile,
    StaticPassDb,
    add_user,
    check_user_name,
    delete_user,
    list_users,
    open_passdb,
    set_password,
)
from .penalty import AuthPenalty
from .schemes import (
    DEFAULT_PASS_SCHEME,
    DEFAULT_SCHEME,
    GENERATE_SCHEMES,
    SCHEMES,
    check_stored_password,
    hash_password,
    verify_password,
)
from .sql import SqlPassDb, SqlSettings
from .userdb import UserFields, user_fields
from .verify import UserEntry

__all__ = [
    "DEFAULT_PASS_SCHEME",
    "DEFAULT_SCHEME",
    "GENERATE_SCHEMES",
    "SCHEMES",
    "AuthConfigError",
    "AuthError",
    "AuthPenalty",
    "InvalidHash",
    "PassDb",
    "PassDbUnavailable",
    "PasswdFile",
    "PasswdFileError",
    "SqlPassDb",
    "SqlSettingError",
    "SqlSettings",
    "StaticPassDb",
    "UnknownScheme",
    "UserEntry",
    "UserExists",
    "UserFields",
    "UserNotFound",
    "UserdbError",
    "add_user",
    "check_stored_password",
    "check_user_name",
    "delete_user",
    "hash_password",
    "list_users",
    "open_passdb",
    "set_password",
    "user_fields",
    "verify_password",
]
