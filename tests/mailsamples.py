"""Small self-checking messages for the mail storage tests (also imported by their child
processes, so this module imports nothing from the test package)."""

from __future__ import annotations

import hashlib


def message(i: int, tag: str = "", size: int = 0) -> bytes:
    """A small, unique, self-checking message."""
    body = (f"line {i} {tag}\n" * max(1, size // 16)).encode()
    head = (f"From: Sender {i} <s{i}@example.com>\nTo: rcpt@example.org\n"
            f"Subject: message {i} {tag}\nMessage-ID: <{i}.{tag}@example.com>\n"
            f"X-Digest: {hashlib.sha256(body).hexdigest()}\n\n").encode()
    return (head + body).replace(b"\n", b"\r\n")


def check_message(data: bytes) -> None:
    head, _, body = data.partition(b"\r\n\r\n")
    digest = [ln for ln in head.split(b"\r\n") if ln.startswith(b"X-Digest: ")][0][10:]
    assert hashlib.sha256(body.replace(b"\r\n", b"\n")).hexdigest().encode() == digest
