"""An HTTP ingestion gateway for application logs, host metrics and financial events into Kafka."""
