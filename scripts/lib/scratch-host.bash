# A release warren-host of one's own, for the measuring scripts
# (`host-cost`, `compile-cost`): serving one module from modules/ on a
# queue of its own, stopped and cleaned up (its queue, deploy stream and
# temporary folder) when the script exits. Source it from the repository
# root after setting `tool` (the script's name, for messages).
#
#   scratch_host_start NAME CACHE_DIR [HOST FLAG...]
#       checks modules/NAME.wasm and $BIN_DIR/warren-host (default
#       target/release), starts the host; sets `bin`, `amqp_url`, `queue`,
#       `work`, `log` and `host`. CACHE_DIR "" means a fresh one in `work`.
#   scratch_host_wait_ready SECONDS
#       until the host logs "warren-host ready"; exits 1 with its log if it
#       dies or is not ready by then.

bin=${BIN_DIR:-target/release}
amqp_url=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}

scratch_host_start() {
  local name=$1 cache=$2
  shift 2
  [ -f "modules/$name.wasm" ] || { echo "$tool: modules/$name.wasm is missing (just build-guests)" >&2; exit 2; }
  [ -x "$bin/warren-host" ] || { echo "$tool: $bin/warren-host is missing (cargo build --release --workspace)" >&2; exit 2; }
  queue="$tool-$$-$RANDOM"
  work=$(mktemp -d)
  mkdir "$work/modules"
  cp "modules/$name.wasm" "$work/modules/"
  log="$work/host.log"
  "$bin/warren-host" --amqp-url "$amqp_url" --queue "$queue" --modules-dir "$work/modules" \
    --cache-dir "${cache:-$work/cache}" "$@" >"$log" 2>&1 &
  host=$!
  trap scratch_host_cleanup EXIT
}

scratch_host_cleanup() {
  kill -INT "$host" 2>/dev/null && wait "$host" 2>/dev/null || true
  if command -v rabbitmqctl >/dev/null; then
    rabbitmqctl delete_queue "$queue" >/dev/null 2>&1 || true
    rabbitmqctl delete_queue "$queue.deploys" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}

scratch_host_wait_ready() {
  scratch_host_wait_for "warren-host ready" "$1" "get ready"
}

# Until the host's log matches PATTERN (grep -E); exits 1 with the log,
# saying the host did not WHAT, if it dies or SECONDS pass first.
scratch_host_wait_for() {
  local pattern=$1 tenths=$(( $2 * 10 )) what=$3
  for _ in $(seq 1 "$tenths"); do
    grep -Eq "$pattern" "$log" && return 0
    kill -0 "$host" 2>/dev/null || break
    sleep 0.1
  done
  grep -Eq "$pattern" "$log" && return 0
  echo "$tool: the host did not $what; its log:" >&2
  cat "$log" >&2
  exit 1
}
