"""Generated from ops/proto/prometheus/ by scripts/generate-protos.sh."""
