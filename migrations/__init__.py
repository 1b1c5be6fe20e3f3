"""The atlas's alembic history (one for PostgreSQL and DuckDB); applied by ``atlas db upgrade``."""
