#!/bin/bash
# Login latency through a real PAM stack: pamtester under pam_wrapper, the
# password by pam_matrix, then pam_smartsign asking a running smartsignd to
# verify a TOTP code (computed by oathtool before the clock starts).
# Prints the median, 95th percentile, min and max of N logins, and the same
# for the stack without SmartSign, so the difference is SmartSign's cost.
# Run as root (it adds N throw-away users, one code each): bench/login_latency.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:-50}
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
scripts/install-deps
cargo build --release --workspace --quiet
BIN=$PWD/target/release
MATRIX=/usr/lib/x86_64-linux-gnu/pam_wrapper/pam_matrix.so

TMP=$(mktemp -d /tmp/smartsign-bench.XXXXXX)
chmod 755 "$TMP"
DAEMON_PID=""
USERS=()
cleanup() {
    set +e
    [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" && wait "$DAEMON_PID" 2>/dev/null
    for u in "${USERS[@]}"; do userdel -r "$u" 2>/dev/null; done
    rm -rf "$TMP"
}
trap cleanup EXIT

printf 'socket = "%s/s.sock"\nstate_dir = "%s/state"\n' "$TMP" "$TMP" > "$TMP/smartsign.toml"
"$BIN/smartsignd" --config "$TMP/smartsign.toml" 2> "$TMP/smartsignd.log" &
DAEMON_PID=$!
for _ in $(seq 100); do [ -S "$TMP/s.sock" ] && break; sleep 0.1; done

mkdir -p "$TMP/pam.d" "$TMP/pw"
chmod 1777 "$TMP/pw"
printf 'auth required %s passdb=%s/passdb\nauth required %s/libpam_smartsign.so socket=%s/s.sock\n' \
    "$MATRIX" "$TMP" "$BIN" "$TMP" > "$TMP/pam.d/bench-smartsign"
printf 'auth required %s passdb=%s/passdb\n' "$MATRIX" "$TMP" > "$TMP/pam.d/bench-password"
: > "$TMP/passdb"

echo "Enrolling $N users..." >&2
for i in $(seq -w 1 "$N"); do
    u=ssbench$i
    useradd -M -s /usr/sbin/nologin "$u"
    USERS+=("$u")
    printf '%s:pw:bench-smartsign\n%s:pw:bench-password\n' "$u" "$u" >> "$TMP/passdb"
    secret=$("$BIN/smartsign" --socket "$TMP/s.sock" --user "$u" phone add bench --json |
        sed -n 's/.*"secret": "\([A-Z2-7]*\)".*/\1/p')
    "$BIN/smartsign" --socket "$TMP/s.sock" --user "$u" phone confirm bench \
        "$(oathtool --totp -b -N '30 seconds ago' "$secret")" > /dev/null
    echo "$secret" > "$TMP/secret.$u"
done

login() { # service user answers...
    local service=$1 user=$2
    shift 2
    printf '%s\n' "$@" | LD_PRELOAD=libpam_wrapper.so PAM_WRAPPER=1 \
        PAM_WRAPPER_SERVICE_DIR="$TMP/pam.d" TMPDIR="$TMP/pw" \
        pamtester bench-"$service" "$user" authenticate > /dev/null 2>&1
}

stats() { # label, then nanoseconds on stdin
    sort -n | awk -v label="$1" '{ v[NR] = $1 / 1000000 } END {
        p95 = int(NR * 0.95 + 0.5); if (p95 < 1) p95 = 1
        med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%-28s n=%d median=%.2f ms p95=%.2f ms min=%.2f ms max=%.2f ms\n",
            label, NR, med, v[p95], v[1], v[NR] }'
}

: > "$TMP/with"; : > "$TMP/without"; failed=0
for u in "${USERS[@]}"; do
    code=$(oathtool --totp -b "$(cat "$TMP/secret.$u")")
    start=$(date +%s%N)
    login smartsign "$u" pw "$code" || failed=$((failed + 1))
    end=$(date +%s%N)
    echo $((end - start)) >> "$TMP/with"

    start=$(date +%s%N)
    login password "$u" pw
    end=$(date +%s%N)
    echo $((end - start)) >> "$TMP/without"
done

stats "password + SmartSign code" < "$TMP/with"
stats "password alone" < "$TMP/without"
echo "failed logins: $failed of $N"
[ "$failed" -eq 0 ]
