#!/usr/bin/env bash
# Model-checks spec/model/seal.pml with spin (issue 9, spec/protocol.md).
#
#   bash spec/model/check.sh
#
# The NEW protocol must verify every property with 0 errors and the coverage
# claims must fail (the model reaches the cases they name). The OLD protocol
# must violate `safe`; the NEW protocol as first briefed (AS_BRIEFED) must
# violate `live`; without the guard (NO_GUARD) `safe` must fail once the
# tombstone can vanish. Any other outcome makes the script exit 1.
# Needs spin and gcc. Builds in a temporary folder, removed on exit.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
for tool in spin gcc; do
  command -v "$tool" >/dev/null || { echo "check.sh: $tool not found (apt-get install spin gcc)" >&2; exit 1; }
done

work="$(mktemp -d "${TMPDIR:-/tmp}/oneway-spin.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cp "$here/seal.pml" "$work/"
cd "$work"

failures=0

# build VARIANT_FLAGS... : spin -a, and the pan that checks the ltl claims
build() {
  rm -f pan pan_safety pan.* ./*.trail _spin_nvr.tmp
  spin "$@" -a seal.pml >spin.log 2>&1 || { cat spin.log; exit 1; }
  gcc -O2 -w -o pan pan.c
}

# verdict LABEL EXPECT(ok|violated|info) OUTPUT_FILE
verdict() {
  local label=$1 expect=$2 out=$3 errors states time got mark
  if grep -q "max search depth too small" "$out"; then
    echo "FAIL  $label: search depth too small (raise -m)"; failures=$((failures + 1)); return
  fi
  errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$out" | tail -1)
  states=$(sed -n 's/^ *\([0-9.e+]*\) states, stored.*/\1/p' "$out" | tail -1)
  time=$(sed -n 's/^pan: elapsed time \([0-9.e+-]*\).*/\1/p' "$out" | tail -1)
  if [ -z "$errors" ]; then
    cat "$out"; echo "FAIL  $label: no result from pan"; failures=$((failures + 1)); return
  fi
  if [ "$errors" = 0 ]; then got=ok; else got=violated; fi
  if [ "$expect" = info ]; then mark=info
  elif [ "$expect" = "$got" ]; then mark=PASS
  else mark=FAIL; failures=$((failures + 1)); fi
  printf '%-5s %-34s %-8s (expected %-8s) %8s states, %ss\n' \
    "$mark" "$label" "$got" "$expect" "${states:-?}" "${time:-?}"
}

# claim VARIANT CLAIM EXPECT [pan flags]
claim() {
  local variant=$1 name=$2 expect=$3; shift 3
  ./pan -m100000 -a "$@" -N "$name" >"run.out" 2>&1 || true
  verdict "$variant/$name" "$expect" run.out
}

# assertions VARIANT EXPECT: lnd's start-up assertions and invalid end states
assertions() {
  gcc -O2 -w -DSAFETY -DNOCLAIM -o pan_safety pan.c
  ./pan_safety -m100000 >"run.out" 2>&1 || true
  verdict "$1/assertions+end-states" "$2" run.out
}

echo "== NEW protocol (must verify)"
build
assertions new ok
for p in safe oneguard onelnd kvnotlocked; do claim new "$p" ok; done
claim new live ok -f
echo "-- coverage (must be reachable, i.e. these claims must fail)"
for p in race tombresync nativerun; do claim new "$p" violated; done

echo "== NEW protocol, larger bounds"
build -DWMAX=3 -DMAXRUNS=4 -DMAXCRASH=3 -DMAXLOSS=2
for p in safe onelnd kvnotlocked; do claim new-large "$p" ok; done
claim new-large live ok -f

echo "== OLD protocol (must violate safe)"
build -DOLD_PROTOCOL
assertions old info
claim old safe violated
for p in oneguard onelnd kvnotlocked; do claim old "$p" info; done
claim old live info -f

echo "== NEW as first briefed (must dead-end: violate live)"
build -DAS_BRIEFED
claim as-briefed safe ok
claim as-briefed live violated -f

echo "== NEW without the guard (tombstone loss makes it unsafe)"
build -DNO_GUARD
claim no-guard safe violated
build -DNO_GUARD -DMAXLOSS=0
claim no-guard-no-loss safe ok
claim no-guard-no-loss live ok -f

if [ "$failures" -ne 0 ]; then
  echo "check.sh: $failures unexpected result(s)" >&2
  exit 1
fi
echo "check.sh: all results as expected"
