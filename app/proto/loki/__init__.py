"""Generated from ops/proto/loki/ by scripts/generate-protos.sh."""
