#!/usr/bin/env bash
# The command-line half of docs/tutorial.md in one script: principals, a mount table and
# the example service in the background, calls by name, a clean stop. Needs `ipc` on PATH
# (`make venv` then `. .venv/bin/activate`, or `pip install ipcclient`).
set -euo pipefail

dir=$(mktemp -d "${TMPDIR:-/tmp}/ipc-tutorial.XXXXXX")
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

# 1. An identity provider, and three principals it blesses.
ipc principal create "$dir/idp" --blessing idp
ipc principal fork "$dir/idp" "$dir/mt" mounttable --for 1h
ipc principal fork "$dir/idp" "$dir/fortune" fortune --for 1h
ipc principal fork "$dir/idp" "$dir/alice" alice --for 1h
ipc principal dump "$dir/alice"

# 2. A mount table (its first line of output is its rooted name).
mkfifo "$dir/mt.out"
IPCCLIENT_CREDENTIALS="$dir/mt" ipc mounttable >"$dir/mt.out" &
pids+=($!)
read -r root <"$dir/mt.out"
export IPCCLIENT_NAMESPACE="$root"

# 3. The example service, published as apps/fortune.
mkfifo "$dir/srv.out"
IPCCLIENT_CREDENTIALS="$dir/fortune" ipc serve --name apps/fortune >"$dir/srv.out" &
pids+=($!)
read -r endpoint <"$dir/srv.out"
echo "server at $endpoint"

# 4. Alice looks around and calls it by name.
export IPCCLIENT_CREDENTIALS="$dir/alice"
ipc glob
ipc signature apps/fortune
ipc call apps/fortune Get
ipc call apps/fortune Stream 2
printf '1\n2\n3\n' | ipc call apps/fortune Double --stdin

# 5. Stop the server: it unmounts its name.
kill -TERM "${pids[1]}"
wait "${pids[1]}"
echo "after the server stopped:"
ipc glob
