"""lmtp front end."""
