"""The ``cloudcote`` command: ``serve``, ``config`` and ``user`` (admin commands follow).

Exit codes follow sysexits.h: 0 ok, 64 usage, 65 bad data (passwd-file), 67 unknown user,
69 unavailable (port in use), 73 cannot create (data_dir), 78 configuration.  Errors go to
stderr as one line.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
from collections.abc import Sequence

from .config import Config, ConfigError, load_config

EX_USAGE, EX_DATAERR, EX_NOUSER, EX_UNAVAILABLE, EX_CANTCREAT, EX_CONFIG = 64, 65, 67, 69, 73, 78
HASH_SCHEMES = ("SHA512-CRYPT", "ARGON2ID", "BLF-CRYPT", "PLAIN")


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise CliError(f"{self.prog}: {message}", EX_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cloudcote", description="Mail server on cloud key-value storage.")
    parser.add_argument("--config", "-c", metavar="FILE",
                        help="configuration file (default: $CLOUDCOTE_CONFIG, else the "
                             "embedded default: posix storage under ./cloudcote-data)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("serve", help="run every configured listener")
    p.add_argument("--config", "-c", metavar="FILE", dest="sub_config", help=argparse.SUPPRESS)

    p = sub.add_parser("config", help="print the effective configuration (like doveconf -n)")
    p.add_argument("--config", "-c", metavar="FILE", dest="sub_config", help=argparse.SUPPRESS)

    user = sub.add_parser("user", help="manage users in the passwd-file passdb")
    user.add_argument("--config", "-c", metavar="FILE", dest="sub_config",
                      help=argparse.SUPPRESS)
    usub = user.add_subparsers(dest="user_command", metavar="ACTION", parser_class=_Parser)
    for name, text in (("add", "add a user"), ("passwd", "change a user's password")):
        u = usub.add_parser(name, help=text)
        u.add_argument("name")
        u.add_argument("--password", help="the password (else read from stdin, or prompted)")
        u.add_argument("--scheme", default="SHA512-CRYPT", type=str.upper,
                       choices=HASH_SCHEMES,
                       help="password scheme (default SHA512-CRYPT; PLAIN stores it readable)")
        if name == "add":
            u.add_argument("--extra", action="append", default=[], metavar="KEY=VALUE",
                           help="extra field such as userdb_quota_rule=*:storage=1G")
    u = usub.add_parser("delete", help="remove a user")
    u.add_argument("name")
    u = usub.add_parser("list", help="list users")
    u.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def _load(args: argparse.Namespace) -> Config:
    path = getattr(args, "sub_config", None) or args.config or os.environ.get("CLOUDCOTE_CONFIG")
    try:
        return load_config(path)
    except ConfigError as exc:
        raise CliError(str(exc), EX_CONFIG) from exc


def setup_logging(config: Config) -> None:
    handler: logging.Handler
    if config.log.path is not None:
        try:
            handler = logging.FileHandler(config.log.path)
        except OSError as exc:
            raise CliError(f"log.path {str(config.log.path)!r}: {exc.strerror}", EX_CANTCREAT) \
                from exc
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log.level.upper())


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import Server, StartupError, banner, run_server
    from .workers import Master, MasterView

    config = _load(args)
    setup_logging(config)
    workers = config.server.worker_count()

    def ready(server: Server | MasterView) -> None:
        listeners = [(x.protocol, x.address) for x in server.listeners]
        print(banner(config, listeners, workers), flush=True)

    try:
        if workers > 1:
            return Master(config, workers).run(ready)
        asyncio.run(run_server(config, ready))
    except StartupError as exc:
        raise CliError(f"cloudcote: {exc}", exc.exit_code) from exc
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    sys.stdout.write(_load(args).to_toml())
    return 0


def _passwd_file(config: Config) -> str:
    kind, _, path = config.auth.passdb.partition(":")
    if kind != "passwd-file":
        raise CliError(f"cloudcote user: auth.passdb is {config.auth.passdb!r}; user "
                       "management needs a passwd-file passdb", EX_CONFIG)
    return path


def _read_password(args: argparse.Namespace) -> str:
    if args.password is not None:
        return str(args.password)
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise CliError("cloudcote user: passwords do not match", EX_USAGE)
        password = first
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CliError("cloudcote user: empty password", EX_USAGE)
    return password


def cmd_user(args: argparse.Namespace) -> int:
    from cloudcote.core.auth import (
        PasswdFileError,
        UserExists,
        UserNotFound,
        add_user,
        delete_user,
        list_users,
        set_password,
    )

    config = _load(args)
    path = _passwd_file(config)
    action = args.user_command
    if action is None:
        raise CliError("cloudcote user: give an action: add, passwd, delete or list", EX_USAGE)
    try:
        if action == "list":
            if not os.path.exists(path):
                return 0
            for entry in list_users(path):
                if args.json:
                    print(json.dumps({"user": entry.user, "uid": entry.uid, "gid": entry.gid,
                                      "home": entry.home, "extra": entry.extra}))
                else:
                    print(entry.user)
            return 0
        if action == "delete":
            delete_user(path, args.name)
            return 0
        password = _read_password(args)
        if action == "add":
            extra = {}
            for item in args.extra:
                key, eq, value = item.partition("=")
                if not eq or not key:
                    raise CliError(f"cloudcote user add: --extra {item!r}: expected KEY=VALUE",
                                   EX_USAGE)
                extra[key] = value
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            add_user(path, args.name, password, scheme=args.scheme, extra=extra or None)
        else:
            set_password(path, args.name, password, scheme=args.scheme)
    except UserExists as exc:
        raise CliError(f"cloudcote user {action}: {exc}", EX_DATAERR) from exc
    except UserNotFound as exc:
        raise CliError(f"cloudcote user {action}: {exc}", EX_NOUSER) from exc
    except PasswdFileError as exc:
        raise CliError(f"cloudcote user {action}: {exc}", EX_DATAERR) from exc
    except ValueError as exc:
        raise CliError(f"cloudcote user {action}: {exc}", EX_USAGE) from exc
    except OSError as exc:
        raise CliError(f"cloudcote user {action}: {path}: {exc.strerror or exc}", EX_CANTCREAT) \
            from exc
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EX_USAGE
        handler = {"serve": cmd_serve, "config": cmd_config, "user": cmd_user}[args.command]
        return handler(args)
    except CliError as exc:
        print(str(exc), file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
