"""Protobuf modules compiled by scripts/protos.py from the upstream .proto files ops/proto/upstream.toml
pins (``make venv`` runs it); only this file is committed. They import nothing of the project."""
