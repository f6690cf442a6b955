"""SQL storage driver (PostgreSQL via asyncpg, MySQL/MariaDB via aiomysql)."""
