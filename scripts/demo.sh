#!/usr/bin/env bash
# With `scripts/serve-local.sh` running: ingests the sample documents of both sample tenants
# and asks each the same question, to show that every tenant is answered from its own data.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tenantry/target}"
URL="${TENANTRY_URL:-http://127.0.0.1:8000}"
QUESTION="${1:-What is the refund policy?}"
scripts/tenantry --version >/dev/null
BIN="$CARGO_TARGET_DIR/debug/tenantry"
for tenant in acme globex; do
  token="$("$BIN" token --tenant "$tenant" --sub demo)"
  for doc in config/documents/"$tenant"/*.md; do
    python3 -c 'import json,sys; print(json.dumps({"title": sys.argv[1], "text": open(sys.argv[1]).read()}))' "$doc" |
      curl -sf "$URL/v1/documents" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -d @- >/dev/null
  done
  echo "== $tenant: $QUESTION"
  curl -sf "$URL/v1/chat" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d "$(python3 -c 'import json,sys; print(json.dumps({"question": sys.argv[1]}))' "$QUESTION")" |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["answer"]); print("sources:", [s["title"] for s in r["sources"]])'
done
