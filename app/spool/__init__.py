"""The durable spool of disk-mode streams: SQLite on disk (store.py), fed to Kafka (spool.py)."""
