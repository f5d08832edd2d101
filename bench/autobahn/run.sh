#!/usr/bin/env bash
# Autobahn|Testsuite fuzzingclient (cases 1-7, 9, 10) against rtedge's `echo`
# sub-protocol.
#
#   bench/autobahn/run.sh                 # all cases in fuzzingclient.json
#   bench/autobahn/run.sh '9.*'           # only these case patterns
#   bench/autobahn/run.sh 5.19 7.1.6      # (a temporary spec is written)
#
# Environment:
#   PY27              Python 2.7 interpreter (default: pyenv's 2.7.18)
#   AUTOBAHN_VENV     virtualenv for the suite (default: /work/autobahn-venv)
#   CARGO_TARGET_DIR  cargo target dir (default: /work/target-ab)
#   REPORT_DIR        report output (default: /tmp/autobahn-reports)
#   SKIP_BUILD=1      use the existing release binary
#
# Exit status: 0 when no case is FAILED, 1 otherwise (2 on set-up errors).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY27="${PY27:-$HOME/.pyenv/versions/2.7.18/bin/python}"
VENV="${AUTOBAHN_VENV:-/work/autobahn-venv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-ab}"
REPORT_DIR="${REPORT_DIR:-/tmp/autobahn-reports}"
CONFIG="$HERE/rtedge-autobahn.toml"
SPEC="$HERE/fuzzingclient.json"
ADDR=127.0.0.1
PORT=9001

# Upstream pins: autobahntestsuite 0.8.2 / autobahn 0.10.9 / Twisted 19.10.0,
# plus the last releases of their dependencies that still support Python 2.7
# (this is the set pip resolves on 2.7; pinned so the run is reproducible).
PINS=(
  autobahntestsuite==0.8.2 autobahn==0.10.9 Twisted==19.10.0
  txaio==2.1.0 six==1.17.0 zope.interface==5.5.2 attrs==21.4.0
  Automat==22.10.0 constantly==15.1.0 hyperlink==21.0.0 idna==2.10
  incremental==22.10.0 PyHamcrest==1.10.1 typing==3.10.0.0
  pyOpenSSL==21.0.0 cryptography==3.3.2 cffi==1.15.1 pycparser==2.21
  service-identity==21.1.0 pyasn1==0.5.1 pyasn1-modules==0.3.0
  ipaddress==1.0.23 enum34==1.1.10
  klein==20.6.0 Werkzeug==1.0.1 Tubes==0.2.1 Jinja2==2.11.3 MarkupSafe==1.1.1
  unittest2==1.1.0 traceback2==1.4.0 linecache2==1.0.0 argparse==1.4.0
)

log() { printf '[autobahn] %s\n' "$*" >&2; }

# --- 1. virtualenv --------------------------------------------------------
if [[ ! -x "$VENV/bin/wstest" ]]; then
  [[ -x "$PY27" ]] || { log "no Python 2.7 at $PY27 (set PY27)"; exit 2; }
  log "creating virtualenv $VENV"
  if ! "$PY27" -m virtualenv --version >/dev/null 2>&1; then
    # pyenv's 2.7 has no virtualenv; 16.7.x is the last single-module
    # release that runs on 2.7 — use its wheel without installing it.
    tmp="$(mktemp -d)"
    "$PY27" -m pip download -q --no-deps virtualenv==16.7.12 -d "$tmp"
    PYTHONPATH="$tmp/virtualenv-16.7.12-py2.py3-none-any.whl" "$PY27" -m virtualenv -q "$VENV"
    rm -rf "$tmp"
  else
    "$PY27" -m virtualenv -q "$VENV"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PINS[@]}" 2>&1 | grep -v DEPRECATION || true
  [[ -x "$VENV/bin/wstest" ]] || { log "wstest not installed"; exit 2; }
fi
PY="$VENV/bin/python"

# --- 2. build ---------------------------------------------------------------
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building rtedge (release, target $CARGO_TARGET_DIR)"
  (cd "$ROOT" && cargo build --release --bin rtedge)
fi
BIN="$CARGO_TARGET_DIR/release/rtedge"
[[ -x "$BIN" ]] || { log "no binary at $BIN"; exit 2; }

# --- 3. spec: a temporary copy with outdir = $REPORT_DIR/servers and, when
# case patterns are given, only those cases ----------------------------------
mkdir -p "$REPORT_DIR"
RUN_SPEC="$(mktemp /tmp/autobahn-spec.XXXXXX.json)"
"$PY" - "$SPEC" "$RUN_SPEC" "$REPORT_DIR/servers" "$@" <<'EOF'
import json, sys
spec = json.load(open(sys.argv[1]))
spec["outdir"] = sys.argv[3]
if sys.argv[4:]:
    spec["cases"] = sys.argv[4:]
json.dump(spec, open(sys.argv[2], "w"), indent=3)
EOF
rm -f "$REPORT_DIR/servers/index.json"

# --- 4. start rtedge --------------------------------------------------------
if (exec 3<>"/dev/tcp/$ADDR/$PORT") 2>/dev/null; then
  log "$ADDR:$PORT is already in use"; exit 2
fi
RTEDGE_LOG="$REPORT_DIR/rtedge.log"
log "starting $BIN (log $RTEDGE_LOG)"
RUST_LOG="${RUST_LOG:-warn}" "$BIN" run --config "$CONFIG" >"$RTEDGE_LOG" 2>&1 &
RTEDGE_PID=$!
cleanup() {
  if kill -0 "$RTEDGE_PID" 2>/dev/null; then
    kill -TERM "$RTEDGE_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$RTEDGE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$RTEDGE_PID" 2>/dev/null || true
  fi
  rm -f "$RUN_SPEC"
  return 0
}
trap cleanup EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/$ADDR/$PORT") 2>/dev/null && break
  kill -0 "$RTEDGE_PID" 2>/dev/null || { log "rtedge exited:"; cat "$RTEDGE_LOG" >&2; exit 2; }
  sleep 0.1
done

# --- 5. fuzzingclient -------------------------------------------------------
log "wstest -m fuzzingclient -s $RUN_SPEC"
start=$(date +%s)
(cd "$REPORT_DIR" && "$VENV/bin/wstest" -m fuzzingclient -s "$RUN_SPEC") >"$REPORT_DIR/wstest.log" 2>&1 || {
  log "wstest failed:"; tail -30 "$REPORT_DIR/wstest.log" >&2; exit 2; }
log "wstest finished in $(( $(date +%s) - start )) s"
kill -0 "$RTEDGE_PID" 2>/dev/null || log "WARNING: rtedge is no longer running (see $RTEDGE_LOG)"
cleanup

# --- 6. summary ---------------------------------------------------------------
"$PY" - "$REPORT_DIR/servers/index.json" <<'EOF'
import json, sys, re
idx = json.load(open(sys.argv[1]))
order = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
def key(c):
    return [int(x) for x in re.findall(r"\d+", c)]
failed = False
for agent, cases in sorted(idx.items()):
    groups = {}
    for cid, r in cases.items():
        g = cid.split(".")[0]
        groups.setdefault(g, {}).setdefault(r["behavior"], 0)
        groups[g][r["behavior"]] += 1
    total = {}
    print("agent %s: %d cases (report: %s)" % (agent, len(cases), sys.argv[1].replace("index.json", "index.html")))
    print("%-6s %s" % ("group", " ".join("%13s" % o for o in order)))
    for g in sorted(groups, key=int):
        print("%-6s %s" % (g, " ".join("%13d" % groups[g].get(o, 0) for o in order)))
        for o, n in groups[g].items():
            total[o] = total.get(o, 0) + n
    print("%-6s %s" % ("total", " ".join("%13d" % total.get(o, 0) for o in order)))
    others = set(total) - set(order)
    if others:
        print("other behaviours: %s" % ", ".join("%s=%d" % (o, total[o]) for o in sorted(others)))
    bad = sorted((c for c, r in cases.items() if r["behavior"] != "OK" or r["behaviorClose"] != "OK"), key=key)
    for c in bad:
        r = cases[c]
        print("  %-10s behavior=%-13s close=%-13s remoteCloseCode=%s" % (c, r["behavior"], r["behaviorClose"], r.get("remoteCloseCode")))
    failed = failed or total.get("FAILED", 0) > 0
sys.exit(1 if failed else 0)
EOF
