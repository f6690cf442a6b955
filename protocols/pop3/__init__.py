"""pop3 front end."""
