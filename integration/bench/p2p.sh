#!/usr/bin/env bash
# p2p.sh — peer-to-peer NAR throughput between two hosts over a veth pair,
# through the real daemons, printed beside raw quic-go single-stream
# throughput measured between the same two hosts in the same run, and their
# ratio (target >= 0.85). Optionally also the loopback figures of the
# transfer package's Go benchmarks.
#
# Two network namespaces A and B joined by a veth pair (10.231.SUBNET.1 and
# .2; no other interface, nothing leaves them). A runs `lancache serve` on a
# chroot store holding one large signed path; B runs `lancache serve
# --store-root none --peer A`. The p2p figure is curl in B fetching the
# path's NAR from B's endpoint (127.0.0.1:37515 in B): A dumps the NAR from
# its store, sends it over QUIC, B verifies its sha256 and streams it to
# curl. The raw figure is integration/bench/quicraw (the same TLS and QUIC
# settings, no protocol, no disk, no hashing) sending as many bytes from A
# to B on one stream. Runs alternate; medians are compared.
#
#   sudo integration/bench/p2p.sh
#
# Environment:
#   BENCH_SIZE_MIB   size of the store path (default 1024)
#   BENCH_FILES      number of random files it holds (default 8)
#   BENCH_RUNS       timed runs of each (default 5)
#   BENCH_SUBNET     the third octet of 10.231.x.0/24 (default 250)
#   BENCH_PIN=1      pin A's processes to CPU 0 and B's to CPU 1, as two
#                    one-core hosts (by default all share every core)
#   BENCH_NIX=1      also time `nix copy` in B from B's endpoint
#   BENCH_LOOPBACK=0 skip `go test -bench 'PeerThroughput|RawQUIC' ./transfer`
#   BENCH_KEEP=1     keep the temp dir
#   LANCACHE_BIN     use this binary instead of building ./cmd/lancache
set -euo pipefail

SIZE_MIB=${BENCH_SIZE_MIB:-1024}
FILES=${BENCH_FILES:-8}
RUNS=${BENCH_RUNS:-5}
SUBNET=${BENCH_SUBNET:-250}

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

need_root "network namespaces and chroot Nix stores need it"
need_tools "apt-get install iproute2 nix-bin curl jq" ip nix nix-store curl jq go
PIN_A=() PIN_B=()
if [ "${BENCH_PIN:-}" = 1 ]; then
	command -v taskset >/dev/null || die "BENCH_PIN=1 needs taskset (util-linux)"
	[ "$(nproc)" -ge 2 ] || die "BENCH_PIN=1 needs 2 CPUs"
	PIN_A=(taskset -c 0) PIN_B=(taskset -c 1)
fi

bench_init lancache-p2p-bench
NS_A=lcb$$a
NS_B=lcb$$b
IP_A=10.231.$SUBNET.1
IP_B=10.231.$SUBNET.2

in_a() { ip netns exec "$NS_A" "$@"; }
in_b() { ip netns exec "$NS_B" "$@"; }

echo "== build lancache and quicraw"
build_lancache
go build -o "$WORK/quicraw" ./integration/bench/quicraw

make_store_path "$SIZE_MIB" "$FILES"
NAR_SIZE=$(nix path-info --store "$SRC" --json "$P" | jq -r 'if type == "array" then .[0].narSize else .[].narSize end')
echo "$P: NAR of $NAR_SIZE bytes"

echo "== namespaces $NS_A ($IP_A) and $NS_B ($IP_B), one veth pair"
del_netns() {
	ip netns del "$NS_A" 2>/dev/null
	ip netns del "$NS_B" 2>/dev/null
}
bench_on_exit del_netns
ip netns add "$NS_A"
ip netns add "$NS_B"
ip link add "${NS_A}" netns "$NS_A" type veth peer name "${NS_B}" netns "$NS_B"
for ns in "$NS_A" "$NS_B"; do
	ip -n "$ns" link set lo up
	ip -n "$ns" link set "$ns" name eth0
done
ip -n "$NS_A" addr add "$IP_A/24" dev eth0
ip -n "$NS_B" addr add "$IP_B/24" dev eth0
ip -n "$NS_A" link set eth0 up
ip -n "$NS_B" link set eth0 up

echo "== start lancache in both and quicraw in $NS_A"
# Started with ip netns exec directly (not through in_a/in_b, which would
# fork a subshell): $! is then the process itself, which cleanup signals.
"${PIN_A[@]}" ip netns exec "$NS_A" "$BIN" serve --store-root "$SRC" --http 127.0.0.1:37515 --quic "$IP_A:37516" \
	--state-dir "$WORK/state-a" --trusted-public-keys "$KEY" --no-mdns --name bench-a \
	>"$WORK/lancache-a.log" 2>&1 &
bench_proc $!
PID_A=$!
"${PIN_B[@]}" ip netns exec "$NS_B" "$BIN" serve --store-root none --http 127.0.0.1:37515 --quic "$IP_B:37516" \
	--state-dir "$WORK/state-b" --trusted-public-keys "$KEY" --no-mdns --name bench-b \
	--peer "$IP_A:37516" >"$WORK/lancache-b.log" 2>&1 &
bench_proc $!
PID_B=$!
"${PIN_A[@]}" ip netns exec "$NS_A" "$WORK/quicraw" -listen "$IP_A:4433" >"$WORK/quicraw.log" 2>&1 &
bench_proc $!
PID_S=$!

B_URL=http://127.0.0.1:37515
wait_inventory "$NS_B" "$B_URL" 1 "$WORK/lancache-b.log"
HASH=$(basename "$P" | cut -c1-32)
NAR_URL=$B_URL/$(in_b curl -fsS "$B_URL/$HASH.narinfo" | awk '/^URL: / { print $2 }')
NAR_HASH=$(in_b curl -fsS "$B_URL/$HASH.narinfo" | awk '/^NarHash: / { print $2 }')

# client_cpu WHAT CMD...: run CMD, adding its CPU seconds to cpu-WHAT.
client_cpu() {
	local what=$1
	shift
	/usr/bin/time -f '%U %S' -o "$WORK/time.out" "$@"
	awk '{ print $1 + $2 }' "$WORK/time.out" >>"$WORK/cpu-$what"
}
# p2p_run: fetch the NAR from B's endpoint once; print the seconds.
p2p_run() {
	local out code size secs
	out=$(client_cpu p2p "${PIN_B[@]}" ip netns exec "$NS_B" curl -sS -o /dev/null -w '%{http_code} %{size_download} %{time_total}' "$NAR_URL")
	read -r code size secs <<<"$out"
	if [ "$code" != 200 ] || [ "$size" != "$NAR_SIZE" ]; then
		die "NAR from B: HTTP $code, $size bytes (want $NAR_SIZE)"
	fi
	echo "$secs"
}
# raw_run: send as many bytes from A to B on one quic-go stream; print the
# seconds.
raw_run() { client_cpu raw "${PIN_B[@]}" ip netns exec "$NS_B" "$WORK/quicraw" -connect "$IP_A:4433" -size "$NAR_SIZE" -runs 1; }
mbps() { awk -v b="$NAR_SIZE" -v s="$1" 'BEGIN { printf "%.1f", b / 1e6 / s }'; }

echo "== warm-up (untimed), and the NAR B serves checked against its NarHash"
got=$(in_b curl -fsS "$NAR_URL" | sha256sum | cut -d' ' -f1)
want=$(nix hash to-base16 --type sha256 "${NAR_HASH#sha256:}")
[ "$got" = "$want" ] || die "NAR from B has sha256 $got, narinfo says $want"
raw_run >/dev/null

echo "== $RUNS timed runs of each, order alternating"
: >"$WORK/times-p2p"
: >"$WORK/times-raw"
: >"$WORK/cpu-p2p"
: >"$WORK/cpu-raw"
A0=$(ticks "$PID_A") B0=$(ticks "$PID_B") S0=$(ticks "$PID_S")
# timed_run WHAT RUN: one run of p2p_run or raw_run, printed and recorded.
timed_run() {
	local secs
	secs=$("${1}_run")
	echo "$secs" >>"$WORK/times-$1"
	printf 'run %d  %-4s %8.3f s  %8s MB/s\n' "$2" "$1" "$secs" "$(mbps "$secs")"
}
timed_runs "$RUNS" timed_run p2p raw

A1=$(ticks "$PID_A") B1=$(ticks "$PID_B") S1=$(ticks "$PID_S")

if [ "${BENCH_NIX:-}" = 1 ]; then
	echo "== nix copy in B from B's endpoint"
	for run in $(seq 1 "$RUNS"); do
		dst=$WORK/dst-$run
		export XDG_CACHE_HOME=$WORK/home/cache-$run
		t0=$(now)
		NIX_CONFIG="$NIX_CONFIG
trusted-public-keys = $KEY" in_b nix copy --from "$B_URL" --to "$dst" "$P"
		t1=$(now)
		secs=$(elapsed "$t0" "$t1")
		echo "$secs" >>"$WORK/times-nix"
		printf 'run %d  nix  %8.3f s  %8s MB/s\n' "$run" "$secs" "$(mbps "$secs")"
		rm -rf "$dst"
	done
fi

p2p=$(median <"$WORK/times-p2p")
raw=$(median <"$WORK/times-raw")
pinning="sharing $(nproc) cores"
[ ${#PIN_A[@]} -gt 0 ] && pinning="A on CPU 0, B on CPU 1"
echo "== results: $NAR_SIZE-byte NAR, $RUNS runs, veth between two namespaces, $pinning"
printf 'median p2p NAR (A store -> QUIC -> B verify -> HTTP -> curl) %8.3f s  %8s MB/s\n' "$p2p" "$(mbps "$p2p")"
printf 'median raw quic-go single stream A -> B                     %8.3f s  %8s MB/s\n' "$raw" "$(mbps "$raw")"
if [ -s "$WORK/times-nix" ]; then
	nixs=$(median <"$WORK/times-nix")
	printf 'median nix copy in B                                       %8.3f s  %8s MB/s\n' "$nixs" "$(mbps "$nixs")"
fi
awk -v p="$p2p" -v r="$raw" 'BEGIN { printf "ratio p2p/raw: %.3f (target >= 0.85)\n", r / p }'
hz=$(getconf CLK_TCK)
gb=$(awk -v n="$RUNS" -v b="$NAR_SIZE" 'BEGIN { print n * b / 1e9 }')
awk -v a=$((A1 - A0)) -v b=$((B1 - B0)) -v hz="$hz" -v gb="$gb" -v c="$(awk '{ s += $1 } END { print s + 0 }' "$WORK/cpu-p2p")" \
	'BEGIN { printf "CPU s per GB, p2p: lancache A %.2f, lancache B %.2f, curl %.2f, total %.2f\n", a / hz / gb, b / hz / gb, c / gb, (a + b) / hz / gb + c / gb }'
awk -v s=$((S1 - S0)) -v hz="$hz" -v gb="$gb" -v c="$(awk '{ s += $1 } END { print s + 0 }' "$WORK/cpu-raw")" \
	'BEGIN { printf "CPU s per GB, raw: quicraw server %.2f, client %.2f, total %.2f\n", s / hz / gb, c / gb, s / hz / gb + c / gb }'

if [ "${BENCH_LOOPBACK:-1}" != 0 ]; then
	echo "== loopback: go test -run '^\$' -bench 'PeerThroughput|RawQUIC' -benchtime 20x -count 3 ./transfer"
	go test -run '^$' -bench 'PeerThroughput|RawQUIC' -benchtime 20x -count 3 ./transfer
fi
