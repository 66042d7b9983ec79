#!/usr/bin/env bash
# buf breaking (FILE rules) against the previous commit. Skipped, with a line saying
# so, when there is no previous commit with a contract to compare against.
set -euo pipefail
cd "$(dirname "$0")/.."
buf=.venv/bin/buf
if ! git rev-parse -q --verify 'HEAD~1^{commit}' >/dev/null 2>&1; then
  echo "buf breaking: no previous commit, nothing to compare"; exit 0
fi
if ! git cat-file -e 'HEAD~1:buf.yaml' 2>/dev/null || ! git cat-file -e 'HEAD~1:proto/byok/v1' 2>/dev/null; then
  echo "buf breaking: previous commit has no contract, nothing to compare"; exit 0
fi
"$buf" breaking --against '.git#ref=HEAD~1'
echo "buf breaking: no breaking change against HEAD~1"
