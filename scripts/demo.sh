#!/usr/bin/env bash
# `make run`: the whole product on this machine, no root: the local API stand-in (with two
# upstreams that answer with their names), the supervisor with a real Envoy, and the agent
# following the stand-in. Everything lives under run/demo/ and listens on 127.0.0.1 only.
# Ctrl-C stops it all cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
# The binaries: `make run` builds target/release; the demo test runs the debug build.
BIN="$(cd "${BIN:-target/release}" && pwd)"
RUN="$PWD/run/demo"
# `make run` installs the pinned Envoy here (or ENVOY_BIN points elsewhere).
export ENVOY_BIN="${ENVOY_BIN:-$PWD/.tools/envoy/bin/envoy}"
[ -x "$ENVOY_BIN" ] || { echo "no Envoy at $ENVOY_BIN: run 'make envoy' first (make run does)" >&2; exit 1; }
rm -rf "$RUN"
mkdir -p "$RUN"
chmod 700 "$RUN"

# The token: random, private.
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$RUN/api-key"
chmod 600 "$RUN/api-key"

cat > "$RUN/lb.json" <<'SPEC'
{
  "identifier": "demo-lb",
  "lbName": "demo",
  "rules": [
    {
      "ruleId": "web",
      "scheme": "http",
      "frontPort": 18080,
      "backPort": 18101,
      "healthCheckPath": "/",
      "checkInterval": 1000,
      "backends": [
        {"identifier": "web1", "ip": "127.0.0.1", "port": 18101, "weight": 100},
        {"identifier": "web2", "ip": "127.0.0.1", "port": 18102, "weight": 100}
      ]
    }
  ]
}
SPEC

# Envoy's --base-id names its hot-restart sockets: another Envoy on this machine (an installed
# load balancer, another checkout's demo, a benchmark) may hold the example's. Take the first
# free one from there, seen in the kernel's list of Unix sockets.
base_id_free() { ! grep -q "@envoy_domain_socket_[a-z_]*_$(( $1 * 10 ))\b" /proc/net/unix; }
BASE_ID=$(sed -n 's/^ *base_id: *\([0-9]*\).*/\1/p' examples/agent.yaml)
while ! base_id_free "$BASE_ID"; do BASE_ID=$((BASE_ID + 1)); done
# The demo's settings: the example's, read from run/demo/ (its paths are the demo's files
# there), with the free base id.
CONF="$RUN/agent.yaml"
sed -e 's#\.\./run/demo/##' -e "s/^\( *base_id:\) *[0-9]*/\1 $BASE_ID/" examples/agent.yaml > "$CONF"
pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping: agent, supervisor (drains Envoy), API stand-in"
  [ -n "${AGENT:-}" ] && kill -TERM "$AGENT" 2>/dev/null || true
  [ -n "${AGENT:-}" ] && wait "$AGENT" 2>/dev/null || true
  [ -n "${SUP:-}" ] && kill -TERM "$SUP" 2>/dev/null || true
  [ -n "${SUP:-}" ] && wait "$SUP" 2>/dev/null || true
  [ -n "${SIM:-}" ] && kill -TERM "$SIM" 2>/dev/null || true
  [ -n "${SIM:-}" ] && wait "$SIM" 2>/dev/null || true
  echo "stopped"
}
trap stop INT TERM EXIT

"$BIN/vpsie-api-sim" --listen 127.0.0.1:18090 --token-file "$RUN/api-key" \
  --lb "demo-lb=$RUN/lb.json" \
  --upstream web1=127.0.0.1:18101 --upstream web2=127.0.0.1:18102 --upstream web3=127.0.0.1:18103 \
  > "$RUN/api-sim.log" 2>&1 &
SIM=$!
"$BIN/vpsie-lb-agent" supervise --config "$CONF" > "$RUN/supervisor.log" 2>&1 &
SUP=$!
for _ in $(seq 1 100); do [ -S "$RUN/supervisor.sock" ] && break; sleep 0.1; done
"$BIN/vpsie-lb-agent" run --config "$CONF" > "$RUN/agent.log" 2>&1 &
AGENT=$!

# The banner only once the load balancer serves; else what went wrong, and where to read more.
served=
wait_s="${DEMO_WAIT_S:-30}"
deadline=$((SECONDS + wait_s))
while [ "$SECONDS" -lt "$deadline" ]; do
  if curl -fs --max-time 1 -o /dev/null http://127.0.0.1:18080/; then served=1; break; fi
  kill -0 "$SUP" 2>/dev/null && kill -0 "$AGENT" 2>/dev/null || break
  sleep 0.2
done
if [ -z "$served" ]; then
  echo "the demo load balancer does not serve on http://127.0.0.1:18080/ after $wait_s s:" >&2
  "$BIN/vpsie-lb-agent" status --config "$CONF" >&2 || true
  echo "logs: $RUN/supervisor.log, $RUN/agent.log, $RUN/envoy.log" >&2
  exit 1
fi

cat <<MSG

  vpsie-lb-agent demo is running (everything on 127.0.0.1, files under $RUN/,
  Envoy base id $BASE_ID):

    curl http://127.0.0.1:18080/                 # answers web1 or web2 (round robin)
    $BIN/vpsie-lb-agent status --config $CONF           # Envoy, config, last poll, events
    $BIN/vpsie-lb-agent status --config $CONF --json    # everything, as JSON

  Change the load balancer live: edit $RUN/lb.json (e.g. add
    {"identifier": "web3", "ip": "127.0.0.1", "port": 18103}
  to "backends", or set a weight); within one poll (2 s) it is in effect, applied
  inside the running Envoy (status: "Last apply  applied live").

  Metrics: what Prometheus scrapes, through Envoy (port 19100), and the agent's own (19101):
    curl -s http://127.0.0.1:19100/stats/prometheus | head     # Envoy's
    curl -s http://127.0.0.1:19100/metrics/agent | head        # the agent's and the supervisor's
    curl -s http://127.0.0.1:19101/readyz                      # the agent's health

  Events the agent reported:
    curl -H "Vpsie-Auth: \$(cat $RUN/api-key)" 'http://127.0.0.1:18090/sim/events?lb=demo-lb'

  Logs: $RUN/agent.log, $RUN/supervisor.log, $RUN/envoy.log, $RUN/access.log (JSON lines), $RUN/api-sim.log
  Ctrl-C stops everything.
MSG
wait "$AGENT"
