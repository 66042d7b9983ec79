#!/usr/bin/env bash
# Regenerates gen/ from proto/ (mode "gen"), or checks that gen/ is exactly what a
# fresh generation gives (mode "check"): a hand-edited generated file or a proto
# changed without `make gen` fails the check.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-gen}
bin=.venv/bin
mapfile -t protos < <(find proto -name '*.proto' | sort)

generate() { # $1: output root
  local out=$1
  mkdir -p "$out/python"
  "$bin/python" -m grpc_tools.protoc -I proto -I third_party \
    --plugin=protoc-gen-mypy="$bin/protoc-gen-mypy" \
    --plugin=protoc-gen-mypy_grpc="$bin/protoc-gen-mypy_grpc" \
    --python_out="$out/python" --grpc_python_out="$out/python" \
    --mypy_out=quiet:"$out/python" --mypy_grpc_out=quiet:"$out/python" \
    --include_source_info --descriptor_set_out="$out/python/byok/v1/byok_v1.binpb" \
    "${protos[@]}"
  cp gen/README.md "$out/README.md" 2>/dev/null || true
}

case "$mode" in
  gen)
    rm -rf gen/python/byok
    generate gen
    echo "gen: regenerated gen/python from ${#protos[@]} protos"
    ;;
  check)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    generate "$tmp"
    if ! diff -r -x __pycache__ gen/python "$tmp/python" >"$tmp/diff"; then
      echo "gen/ is stale or was edited by hand; run 'make gen' and commit the result:" >&2
      head -n 40 "$tmp/diff" >&2
      exit 1
    fi
    echo "gen-check: gen/ matches a fresh generation"
    ;;
  *) echo "usage: $0 gen|check" >&2; exit 2 ;;
esac
