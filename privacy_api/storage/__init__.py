"""Storage: the engine and sessions, the models, the schema and the decrypted column
cache over the records, Alembic's driver."""
