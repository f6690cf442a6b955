"""Modified UTF-7 for mailbox names (RFC 3501 5.1.3)."""

from __future__ import annotations

import base64
import binascii

__all__ = ["decode", "encode"]


def encode(name: str) -> str:
    """A mailbox name as IMAP sends it: printable ASCII as is, ``&`` as ``&-``, every other
    run of characters as ``&`` + modified base64 of its UTF-16BE + ``-``."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            data = "".join(run).encode("utf-16-be")
            out.append("&" + base64.b64encode(data).decode("ascii").rstrip("=")
                       .replace("/", ",") + "-")
            run.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def decode(text: str) -> str:
    """The name a client sent in modified UTF-7; ValueError if it is not valid (8-bit
    characters, a bad shift sequence, or one that encodes printable ASCII)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if not 0x20 <= ord(ch) <= 0x7E:
            raise ValueError("mailbox name must be 7-bit modified UTF-7")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise ValueError("unterminated '&' sequence in mailbox name")
        chunk = text[i + 1:end]
        i = end + 1
        if not chunk:
            out.append("&")
            continue
        b64 = chunk.replace(",", "/")
        b64 += "=" * (-len(b64) % 4)
        try:
            data = base64.b64decode(b64, validate=True)
            decoded = data.decode("utf-16-be")
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError("bad '&' sequence in mailbox name") from None
        if len(data) % 2 or any(0x20 <= ord(c) <= 0x7E for c in decoded):
            raise ValueError("bad '&' sequence in mailbox name")
        if encode(decoded) != "&" + chunk + "-":
            raise ValueError("mailbox name is not in canonical modified UTF-7")
        out.append(decoded)
    return "".join(out)
