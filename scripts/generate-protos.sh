#!/usr/bin/env bash
# Regenerates the Python protobuf modules under app/proto/ from the .proto files under ops/proto/:
# ops/proto/<name>/*.proto becomes app/proto/<name>/*_pb2.py and *_pb2.pyi (grpcio-tools, the dev
# extra). The only way they are made: edit a .proto, run this, commit both. Safe to run repeatedly.
#
#   scripts/generate-protos.sh            # PYTHON=.venv/bin/python by default
#
# A .proto imports another of ops/proto as "<name>/<file>.proto"; protoc writes that import as
# `from <name> import ...`, rewritten here to `from app.proto.<name> import ...`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"

mkdir -p app/proto
[[ -f app/proto/__init__.py ]] || echo '"""Generated protobuf modules (scripts/generate-protos.sh); they import nothing of the project."""' > app/proto/__init__.py

for folder in ops/proto/*/; do
  name="$(basename "$folder")"
  out="app/proto/$name"
  rm -f "$out"/*_pb2.py "$out"/*_pb2.pyi
  mkdir -p "$out"
  [[ -f $out/__init__.py ]] || echo "\"\"\"Generated from ops/proto/$name/ by scripts/generate-protos.sh.\"\"\"" > "$out/__init__.py"
  "$PYTHON" -m grpc_tools.protoc -I ops/proto --python_out=app/proto --pyi_out=app/proto "$folder"*.proto
done

for folder in ops/proto/*/; do
  name="$(basename "$folder")"
  sed -i -E "s/^from $name import /from app.proto.$name import /" app/proto/*/*_pb2.py app/proto/*/*_pb2.pyi
done
echo "generated: $(cd app/proto && ls -d */ | tr -d / | tr '\n' ' ')" >&2
