#!/usr/bin/env bash
# Runs every Go fuzz target in the module for a short time each.
set -euo pipefail
fuzztime=${1:-5s}
found=0
while IFS= read -r file; do
  pkg="./$(dirname "$file")"
  for target in $(grep -oE '^func (Fuzz[A-Za-z0-9_]+)\(' "$file" | sed -E 's/^func (Fuzz[A-Za-z0-9_]+)\(/\1/'); do
    found=$((found+1))
    echo "fuzz: $pkg $target for $fuzztime"
    # Go's fuzzer sometimes ends a time-bounded run with "context deadline
    # exceeded" and no failing input (the deadline hit a worker mid-input).
    # That one case is retried (up to three runs in all); a real failure writes its input under
    # testdata/fuzz and fails at once.
    for attempt in 1 2 3; do
      out=$(mktemp)
      if go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" 2>&1 | tee "$out"; [ "${PIPESTATUS[0]}" -eq 0 ]; then
        rm -f "$out"; break
      fi
      if [ "$attempt" -lt 3 ] && grep -q 'context deadline exceeded' "$out" && ! grep -q 'Failing input' "$out"; then
        echo "fuzz: $target ended on the fuzzer's own deadline without a failing input; running it once more"
        rm -f "$out"; continue
      fi
      rm -f "$out"; exit 1
    done
  done
done < <(git ls-files '*_test.go' | xargs grep -l '^func Fuzz' || true)
echo "fuzz: ran $found targets"
