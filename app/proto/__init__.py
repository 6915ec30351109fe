"""Generated protobuf modules (scripts/generate-protos.sh); they import nothing of the project."""
