"""cloudcote: an IMAP, POP3 and LMTP mail server on pluggable cloud key-value storage."""

__version__ = "0.1.0"
