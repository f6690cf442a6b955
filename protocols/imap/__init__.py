"""imap front end."""
