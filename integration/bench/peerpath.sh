#!/usr/bin/env bash
# peerpath.sh — `nix copy` through a LAN peer (lancache on both hosts) vs
# from nginx on that peer, with the real Nix client, two hosts in network
# namespaces on a bridge, each pinned to its own core; unshaped and on
# links shaped with tc tbf; raw quic-go between the same hosts in the same
# run; CPU-seconds per GB for every process that does the work. The
# benchmark of issue 12.
#
#   sudo integration/bench/peerpath.sh
#   sudo QUICK=1 integration/bench/peerpath.sh            # < 3 minutes
#   sudo SHAPES=1gbit CASES=closure RUNS=5 integration/bench/peerpath.sh
#
# Hosts: namespace A (the holder) runs `lancache serve` on a chroot store
# holding every case's paths, and nginx (one worker) serving the same paths
# as a flat binary cache (`nix copy --to file://DIR?compression=none`) on
# A:8080. Namespace B (the client) runs `lancache serve --store-root none
# --peer A`. A third namespace holds the bridge; nothing has an address
# outside the namespaces made here, and all of them go on exit. A's
# processes run on CPU_A, B's (its daemon, nix, the quicraw client) on
# CPU_B.
#
# Per shape (tc tbf on both ends of both veths, or none): RUNS runs each,
# alternating, of raw quic-go (integration/bench/quicraw, a stream A -> B
# of the first one-path case's NAR size) and of the QUIC hop (curl in B
# fetching that case's NAR from B's endpoint: A's store -> QUIC -> B's
# verifier -> HTTP, no Nix); then per
# case RUNS runs each, alternating (lancache, nginx, nginx, lancache, ...),
# of `nix copy` in B into a fresh chroot store from
# http://127.0.0.1:37515 (B's daemon, fetching from A over QUIC) and from
# http://A:8080 (nginx); every copy is verified (nix-store --verify-path).
# Each run's seconds and the CPU time of lancache A and B
# (/proc/PID/stat), of the nginx worker and of nix (/usr/bin/time) go to
# $OUT/runs.tsv; the table gives medians and CPU-s per GB of NAR, and the
# receiving daemon's floor from issue 12: raw quic-go's receive cost (the
# quicraw client's CPU-s/GB) + sha256 (quicraw -sha256 on CPU_B) + 0.3.
# With PPROF=1 and a daemon that has --debug-pprof, each shape's big case
# ends with a PPROF_SECONDS CPU profile of both daemons taken while B's
# daemon copies the big path again and again; `go tool pprof -top` heads
# are printed and the profiles kept in $OUT.
#
# Cases (CASES, in this order):
#   big                   one path of SIZE MiB of random (incompressible) data
#   closure               a Firefox-shaped closure: CLOSURE_PATHS paths,
#                         CLOSURE_MIB*SCALE MiB in all, log-normal sizes,
#                         references forming a DAG (integration/bench/mkclosure,
#                         deterministic for SEED), random data
#   compressible          one path of SIZE MiB of real files (/usr/lib,
#                         /usr/share: binaries and text)
#   compressible-closure  the closure shape, of real files
#
# Environment (defaults; QUICK=1, a smoke run of the script, changes those
# marked *):
#   SIZE=512*          MiB of the big and compressible paths (QUICK: 64)
#   SCALE=1*           scale of the closure's total size (QUICK: 0.02)
#   CLOSURE_PATHS=373* paths in the closure cases (QUICK: 100)
#   CLOSURE_MIB=1536   MiB of the closure at SCALE=1
#   SEED=1             seed of the closure cases' sizes, references and data
#   RUNS=3*            timed runs of each (QUICK: 1)
#   SHAPES="none 1gbit 2500mbit"*  link shapes: none or a tc rate (QUICK: "none 1gbit")
#   CASES="big closure compressible"
#   TBF_LATENCY=10ms   the tbf queue, as time at the shaped rate
#   PIN=1              pin A to CPU_A=0 and B to CPU_B=1 (PIN=0: no pinning)
#   PPROF=1            profile the daemons (needs --debug-pprof); PPROF_SECONDS=10* (QUICK: 3)
#   WARMUP=1*          one untimed copy of each case from each server first (QUICK: 0)
#   SUBNET=252         the third octet of 10.231.x.0/24
#   OUT                where runs.tsv, table.txt and profiles go (default
#                      ${TMPDIR:-/tmp}/lancache-peerpath-DATE; kept)
#   BENCH_DST_DIR*     where the destination stores go (default: the temp
#                      dir; /dev/shm takes the disk out of the measurement;
#                      QUICK: /dev/shm)
#   BENCH_WORK_DIR*    where the temp dir (source store, binary cache) goes
#                      (default ${TMPDIR:-/tmp}; QUICK: /dev/shm, so that a
#                      smoke run does not wait for a disk others are filling)
#   BENCH_KEEP=1       keep the temp dir
#   LANCACHE_BIN       use this binary instead of building ./cmd/lancache
set -euo pipefail

if [ "${QUICK:-}" = 1 ]; then
	: "${SIZE:=64}" "${SCALE:=0.02}" "${CLOSURE_PATHS:=100}" "${RUNS:=1}" "${SHAPES:=none 1gbit}" \
		"${PPROF_SECONDS:=3}" "${WARMUP:=0}" "${BENCH_DST_DIR:=/dev/shm}" "${BENCH_WORK_DIR:=/dev/shm}"
	export BENCH_DST_DIR
fi
SIZE=${SIZE:-512}
SCALE=${SCALE:-1}
CLOSURE_PATHS=${CLOSURE_PATHS:-373}
CLOSURE_MIB=${CLOSURE_MIB:-1536}
SEED=${SEED:-1}
RUNS=${RUNS:-3}
SHAPES=${SHAPES:-none 1gbit 2500mbit}
CASES=${CASES:-big closure compressible}
PIN=${PIN:-1}
CPU_A=${CPU_A:-0}
CPU_B=${CPU_B:-1}
PPROF=${PPROF:-1}
PPROF_SECONDS=${PPROF_SECONDS:-10}
WARMUP=${WARMUP:-1}
SUBNET=${SUBNET:-252}
OUT=${OUT:-${TMPDIR:-/tmp}/lancache-peerpath-$(date -u +%Y%m%dT%H%M%SZ)}

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

need_root "network namespaces, tc and chroot Nix stores need it"
need_tools "apt-get install iproute2 nix-bin nginx curl jq util-linux time" \
	ip tc nix nix-store nginx curl jq go taskset /usr/bin/time
for c in $CASES; do
	case $c in big | closure | compressible | compressible-closure) ;; *) die "CASES: unknown case $c" ;; esac
done
PIN_A=() PIN_B=()
if [ "$PIN" = 1 ]; then
	[ "$(nproc)" -ge 2 ] || die "PIN=1 needs 2 CPUs (PIN=0 runs unpinned)"
	PIN_A=(taskset -c "$CPU_A") PIN_B=(taskset -c "$CPU_B")
fi

TMPDIR=${BENCH_WORK_DIR:-${TMPDIR:-/tmp}} bench_init lancache-peerpath
make_dsts
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
echo "== peerpath: SIZE=$SIZE MiB SCALE=$SCALE RUNS=$RUNS SHAPES='$SHAPES' CASES='$CASES' PIN=$PIN; output in $OUT"
echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"

START=$(now)
# stamp: seconds since the start, for the section headings.
stamp() { printf '%.0fs' "$(elapsed "$START" "$(now)")"; }
echo "== build lancache, quicraw and mkclosure"
build_lancache
go build -o "$WORK/quicraw" ./integration/bench/quicraw
go build -o "$WORK/mkclosure" ./integration/bench/mkclosure

## The paths

echo "== $(stamp): make the paths: $CASES"
nix-store --generate-binary-cache-key bench-1 "$WORK/sk" "$WORK/pk" 2>/dev/null
KEY=$(cat "$WORK/pk")
trust_key
SRC=$WORK/src
declare -A ROOT NPATHS NARBYTES
# mib_bytes MIB [FACTOR]: MIB (times FACTOR) MiB in bytes.
mib_bytes() { awk -v m="$1" -v f="${2:-1}" 'BEGIN { printf "%d", m * f * 1048576 }'; }
for c in $CASES; do
	case $c in
	big) args=(-n 1 -size "$(mib_bytes "$SIZE")" -data random) ;;
	closure) args=(-n "$CLOSURE_PATHS" -size "$(mib_bytes "$CLOSURE_MIB" "$SCALE")" -data random) ;;
	compressible) args=(-n 1 -size "$(mib_bytes "$SIZE")" -data real) ;;
	compressible-closure) args=(-n "$CLOSURE_PATHS" -size "$(mib_bytes "$CLOSURE_MIB" "$SCALE")" -data real) ;;
	esac
	ROOT[$c]=$("$WORK/mkclosure" -o "$WORK/export" -name "$c" -seed "$SEED" "${args[@]}")
	nix-store --store "$SRC" --import <"$WORK/export" >/dev/null
	rm -f "$WORK/export"
	nix store sign --store "$SRC" -k "$WORK/sk" -r "${ROOT[$c]}"
	nix-store --store "$SRC" -qR "${ROOT[$c]}" >"$WORK/closure-$c"
	NPATHS[$c]=$(wc -l <"$WORK/closure-$c")
	NARBYTES[$c]=$(nix path-info --store "$SRC" --json -r "${ROOT[$c]}" | jq '[.[] | .narSize] | add')
	echo "case $c: ${ROOT[$c]}, ${NPATHS[$c]} paths, $((NARBYTES[$c] / 1048576)) MiB of NAR ($(stamp))"
done

echo "== $(stamp): the flat binary cache nginx serves (compression=none)"
BC=$WORK/binary-cache
roots=()
for c in $CASES; do roots+=("${ROOT[$c]}"); done
nix copy --from "$SRC" --to "file://$BC?compression=none" "${roots[@]}" 2>>"$WORK/nix-copy.log"
if command -v zstd >/dev/null; then
	for c in $CASES; do
		case $c in compressible*) ;; *) continue ;; esac
		z=$(while read -r p; do
			cat "$BC/$(awk '/^URL: / { print $2 }' "$BC/$(basename "$p" | cut -c1-32).narinfo")"
		done <"$WORK/closure-$c" | zstd -1 -T1 -c | wc -c)
		echo "case $c: zstd -1 makes its $((NARBYTES[$c] / 1048576)) MiB of NAR $((z / 1048576)) MiB ($(ratio "${NARBYTES[$c]}" "$z")x)"
	done
fi
TOTAL_PATHS=$(cat "$WORK"/closure-* | sort -u | wc -l)

## The hosts

NS_BR=lcpp$$br
NS_A=lcpp$$a
NS_B=lcpp$$b
IP_A=10.231.$SUBNET.1
IP_B=10.231.$SUBNET.2
echo "== $(stamp): namespaces $NS_A ($IP_A) and $NS_B ($IP_B) on a bridge in $NS_BR"
netns_bridge "$NS_BR"
netns_host "$NS_A" "$NS_BR" "$IP_A/24"
netns_host "$NS_B" "$NS_BR" "$IP_B/24"
LINKS=("$NS_A:eth0" "$NS_BR:$NS_A" "$NS_BR:$NS_B" "$NS_B:eth0")
in_b() { "${PIN_B[@]}" ip netns exec "$NS_B" "$@"; }

# Does the daemon have --debug-pprof? An unknown flag is named in the
# error; a known one lets parsing reach the bogus flag after it.
PPROF_ARGS=()
if [ "$PPROF" = 1 ]; then
	probe=$("$BIN" serve --debug-pprof 127.0.0.1:0 --no-such-flag-peerpath 2>&1 || true)
	if [[ $probe == *no-such-flag-peerpath* ]]; then
		PPROF_ARGS=(--debug-pprof 127.0.0.1:6060)
	else
		echo "note: $BIN has no --debug-pprof; no profiles"
		PPROF=0
	fi
fi

echo "== start lancache in both, nginx and the quicraw server in $NS_A"
# Started through exec chains (taskset, ip netns exec): $! is the process
# itself, whose CPU time is read and which cleanup signals.
"${PIN_A[@]}" ip netns exec "$NS_A" "$BIN" serve --store-root "$SRC" --http 127.0.0.1:37515 --quic "$IP_A:37516" \
	--state-dir "$WORK/state-a" --trusted-public-keys "$KEY" --no-mdns --name bench-a "${PPROF_ARGS[@]}" \
	>"$WORK/lancache-a.log" 2>&1 &
bench_proc $!
PID_A=$!
"${PIN_B[@]}" ip netns exec "$NS_B" "$BIN" serve --store-root none --http 127.0.0.1:37515 --quic "$IP_B:37516" \
	--state-dir "$WORK/state-b" --trusted-public-keys "$KEY" --no-mdns --name bench-b \
	--peer "$IP_A:37516" "${PPROF_ARGS[@]}" >"$WORK/lancache-b.log" 2>&1 &
bench_proc $!
PID_B=$!
nginx_conf 1 "$IP_A:8080" "$BC"
"${PIN_A[@]}" ip netns exec "$NS_A" nginx -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
bench_proc $! QUIT
PID_NGINX=$!
"${PIN_A[@]}" ip netns exec "$NS_A" "$WORK/quicraw" -listen "$IP_A:4433" >"$WORK/quicraw.log" 2>&1 &
bench_proc $!
PID_RAW=$!

LC_URL=http://127.0.0.1:37515
NGINX_URL=http://$IP_A:8080
for _ in $(seq 1 300); do
	ip netns exec "$NS_B" curl -fsS -o /dev/null "$NGINX_URL/nix-cache-info" 2>/dev/null && break
	sleep 0.1
done
ip netns exec "$NS_B" curl -fsS -o /dev/null "$NGINX_URL/nix-cache-info" ||
	die "nginx in $NS_A does not answer: $(cat "$WORK/nginx/error.log")"
wait_inventory "$NS_B" "$LC_URL" "$TOTAL_PATHS" "$WORK/lancache-b.log"
NGINX_WORKER=$(ps -o pid= --ppid "$PID_NGINX" | tr -d ' ')
[ "$(echo "$NGINX_WORKER" | wc -w)" = 1 ] || die "want one nginx worker, have: $NGINX_WORKER"

## Measurements

HZ=$(getconf CLK_TCK)
RAW_BYTES=$(mib_bytes "$SIZE")
# The QUIC hop is measured on the first one-path case, if there is one.
HOP_CASE=
for c in $CASES; do
	if [ "${NPATHS[$c]}" = 1 ]; then
		HOP_CASE=$c
		break
	fi
done
if [ -n "$HOP_CASE" ]; then
	hop_hash=$(basename "${ROOT[$HOP_CASE]}" | cut -c1-32)
	HOP_URL=$LC_URL/$(ip netns exec "$NS_B" curl -fsS "$LC_URL/$hop_hash.narinfo" | awk '/^URL: / { print $2 }')
	[ "$HOP_URL" != "$LC_URL/" ] || die "B's endpoint has no narinfo URL for ${ROOT[$HOP_CASE]}"
	RAW_BYTES=${NARBYTES[$HOP_CASE]}
fi
SHA=$("${PIN_B[@]}" "$WORK/quicraw" -sha256 "$((RAW_BYTES > 1000000000 ? RAW_BYTES : 1000000000))")
echo "sha256 on CPU ${CPU_B}: $SHA CPU-s/GB"
RUNS_TSV=$OUT/runs.tsv
printf 'shape\tcase\tserver\trun\tseconds\tnar_bytes\tcpu_a\tcpu_b\tcpu_nginx\tcpu_client\n' >"$RUNS_TSV"

# record SERVER RUN SECS BYTES A B NGINX CLIENT: one line of runs.tsv for
# the current SHAPE and CASE. CPU seconds: A = lancache A (for raw runs the
# quicraw server), B = lancache B, NGINX = its worker, CLIENT = nix copy
# (for raw runs the quicraw client).
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$SHAPE" "$CASE" "$@" >>"$RUNS_TSV"; }
# cpu_delta T0 T1: clock ticks to seconds.
cpu_delta() { awk -v a="$1" -v b="$2" -v hz="$HZ" 'BEGIN { printf "%.3f", (b - a) / hz }'; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / 1e6 / s }'; }

# transport_run raw|hop RUN: one quicraw stream of RAW_BYTES from A to B
# (raw), or one GET of HOP_CASE's NAR from B's endpoint by curl in B (hop:
# A's store -> QUIC -> B verifies -> HTTP -> curl, no Nix); recorded as
# CASE raw or hop, unless RUN is 0.
transport_run() {
	local what=$1 run=$2 a0 a1 b0 b1 secs out code size
	if [ "$what" = raw ]; then
		a0=$(ticks "$PID_RAW")
		secs=$(/usr/bin/time -f '%U %S' -o "$WORK/time.out" "${PIN_B[@]}" ip netns exec "$NS_B" \
			"$WORK/quicraw" -connect "$IP_A:4433" -size "$RAW_BYTES" -runs 1) || die "quicraw failed: $(cat "$WORK/time.out")"
		a1=$(ticks "$PID_RAW") b0=0 b1=0
	else
		a0=$(ticks "$PID_A") b0=$(ticks "$PID_B")
		out=$(/usr/bin/time -f '%U %S' -o "$WORK/time.out" "${PIN_B[@]}" ip netns exec "$NS_B" \
			curl -sS -o /dev/null -w '%{http_code} %{size_download} %{time_total}' "$HOP_URL") ||
			die "GET $HOP_URL in $NS_B failed: $out"
		a1=$(ticks "$PID_A") b1=$(ticks "$PID_B")
		read -r code size secs <<<"$out"
		if [ "$code" != 200 ] || [ "$size" -le 0 ]; then
			die "GET $HOP_URL in $NS_B: HTTP $code, $size bytes"
		fi
	fi
	[ "$run" -gt 0 ] || return 0
	CASE=$what record "$(if [ "$what" = raw ]; then echo raw; else echo lancache; fi)" "$run" "$secs" "$RAW_BYTES" \
		"$(cpu_delta "$a0" "$a1")" "$(cpu_delta "$b0" "$b1")" 0 "$(awk '{ print $1 + $2 }' "$WORK/time.out")"
	printf 'run %d  %-14s %-8s %-20s %8.3f s  %7s MB/s\n' "$run" "$SHAPE" "" \
		"$(if [ "$what" = raw ]; then echo "raw quic-go"; else echo "QUIC hop to curl"; fi)" "$secs" "$(mbps "$RAW_BYTES" "$secs")"
}

# nix_copy SERVER DST: nix copy of CASE's root from SERVER into DST, in B,
# its CPU seconds (user + system) in $WORK/time.out.
nix_copy() {
	local url=$LC_URL
	[ "$1" = nginx ] && url=$NGINX_URL
	/usr/bin/time -f '%U %S' -o "$WORK/time.out" "${PIN_B[@]}" ip netns exec "$NS_B" \
		nix copy --from "$url" --to "$2" "${ROOT[$CASE]}" 2>>"$WORK/nix-copy.log" ||
		die "nix copy of $CASE from $1 ($url) failed: $(tail -n 5 "$WORK/nix-copy.log")"
}

# copy_case SERVER RUN: one timed, verified nix copy of CASE from SERVER
# (lancache or nginx) into a fresh chroot store, recorded (RUN 0: not).
copy_case() {
	local server=$1 run=$2 dst a0 a1 b0 b1 w0 w1 t0 t1 secs
	dst=$DSTS/$CASE-$server-$run
	export XDG_CACHE_HOME=$WORK/home/cache-$SHAPE-$CASE-$server-$run
	sync # start without a writeback backlog from the previous run
	a0=$(ticks "$PID_A") b0=$(ticks "$PID_B") w0=$(ticks "$NGINX_WORKER")
	t0=$(now)
	nix_copy "$server" "$dst"
	t1=$(now)
	a1=$(ticks "$PID_A") b1=$(ticks "$PID_B") w1=$(ticks "$NGINX_WORKER")
	secs=$(elapsed "$t0" "$t1")
	# shellcheck disable=SC2046 # one argument per store path
	nix-store --store "$dst" --verify-path $(cat "$WORK/closure-$CASE") ||
		die "$CASE copied from $server does not verify"
	rm -rf "$dst" "$XDG_CACHE_HOME"
	[ "$run" -gt 0 ] || return 0
	record "$server" "$run" "$secs" "${NARBYTES[$CASE]}" "$(cpu_delta "$a0" "$a1")" "$(cpu_delta "$b0" "$b1")" \
		"$(cpu_delta "$w0" "$w1")" "$(awk '{ print $1 + $2 }' "$WORK/time.out")"
	printf 'run %d  %-14s %-8s %-20s %8.3f s  %7s MB/s\n' "$run" "$SHAPE" "$server" "$CASE" "$secs" "$(mbps "${NARBYTES[$CASE]}" "$secs")"
}

# profile_daemons: a PPROF_SECONDS CPU profile of both daemons while B's
# daemon copies CASE again and again; profiles and -top heads into OUT.
profile_daemons() {
	local h ns pids=() n=0 f
	echo "== $(stamp): $SHAPE: ${PPROF_SECONDS} s CPU profiles of both daemons during lancache copies of $CASE"
	for h in a b; do
		ns=$NS_A
		[ $h = b ] && ns=$NS_B
		ip netns exec "$ns" curl -fsS --max-time "$((PPROF_SECONDS + 30))" -o "$OUT/pprof-$SHAPE-$CASE-$h.pb.gz" \
			"http://127.0.0.1:6060/debug/pprof/profile?seconds=$PPROF_SECONDS" &
		pids+=($!)
	done
	while kill -0 "${pids[0]}" 2>/dev/null || kill -0 "${pids[1]}" 2>/dev/null; do
		export XDG_CACHE_HOME=$WORK/home/cache-pprof-$n
		nix_copy lancache "$DSTS/pprof-$n"
		rm -rf "$DSTS/pprof-$n" "$XDG_CACHE_HOME"
		n=$((n + 1))
	done
	for h in 0 1; do wait "${pids[h]}" || die "a profile could not be taken (curl exited $?)"; done
	echo "($n copies during the profiles)"
	for h in a b; do
		f=$OUT/pprof-$SHAPE-$CASE-$h
		go tool pprof -top -nodecount=25 "$BIN" "$f.pb.gz" >"$f.top.txt" 2>/dev/null
		echo "-- lancache $h ($( [ $h = a ] && echo "holder, sender" || echo "client, receiver")): $f.top.txt"
		head -n 20 "$f.top.txt"
	done
}

# The profiles are taken during the big case, or the first if there is none.
PROFILE_CASE=$(echo "$CASES" | awk '{ print $1 }')
case " $CASES " in *" big "*) PROFILE_CASE=big ;; esac
WARMED=
for SHAPE in $SHAPES; do
	echo "== $(stamp): shape $SHAPE"
	shape_links "$SHAPE" "${LINKS[@]}"
	transport_run raw 0 # the connection's first stream, untimed
	if [ -n "$HOP_CASE" ]; then
		timed_runs "$RUNS" transport_run raw hop
	else
		timed_runs "$RUNS" transport_run raw
	fi
	for CASE in $CASES; do
		if [ "$WARMUP" = 1 ] && [ -z "$WARMED" ]; then
			copy_case lancache 0
			copy_case nginx 0
		fi
		timed_runs "$RUNS" copy_case lancache nginx
		if [ "$PPROF" = 1 ] && [ "$CASE" = "$PROFILE_CASE" ]; then
			profile_daemons
		fi
	done
	WARMED=1
done
shape_links none "${LINKS[@]}"

## Results

# col SHAPE CASE SERVER FIELD: the values of FIELD (a runs.tsv column
# number) of the matching runs, one a line.
col() { awk -F'\t' -v s="$1" -v c="$2" -v v="$3" -v f="$4" 'NR > 1 && $1 == s && $2 == c && $3 == v { print $f }' "$RUNS_TSV"; }
# per_gb SHAPE CASE SERVER FIELD: the sum of FIELD over the matching runs
# per GB of NAR they moved.
per_gb() {
	awk -F'\t' -v s="$1" -v c="$2" -v v="$3" -v f="$4" \
		'NR > 1 && $1 == s && $2 == c && $3 == v { cpu += $f; b += $6 } END { printf "%.2f", b ? cpu / (b / 1e9) : 0 }' "$RUNS_TSV"
}

{
	echo "== results: medians of $RUNS runs; CPU-s per GB of NAR; A on CPU $CPU_A, B on CPU $CPU_B ($([ "$PIN" = 1 ] && echo pinned || echo "not pinned"))"
	echo "   lancache: A = holder daemon (sender), B = client daemon (receiver), nix = nix copy in B; nginx: worker (sender), nix"
	echo "   floor = raw quic-go receive + sha256 ($SHA) + 0.3, the receiving daemon's target (issue 12)"
	printf '%-30s %9s %9s %6s %8s %8s | %6s %6s %6s %6s | %6s %6s\n' \
		config "lancache" "nginx" ratio "lc MB/s" "ng MB/s" "lc A" "lc B" floor nix "nginx" nix
	for SHAPE in $SHAPES; do
		raw=$(col "$SHAPE" raw raw 5 | median)
		rs=$(per_gb "$SHAPE" raw raw 7)
		rr=$(per_gb "$SHAPE" raw raw 10)
		floor=$(awk -v r="$rr" -v s="$SHA" 'BEGIN { printf "%.2f", r + s + 0.3 }')
		printf '%-30s %8.3fs %9s %6s %8s %8s | send %s, receive %s CPU-s/GB\n' \
			"raw quic-go, $SHAPE" "$raw" - - "$(mbps "$RAW_BYTES" "$raw")" - "$rs" "$rr"
		if [ -n "$HOP_CASE" ]; then
			hop=$(col "$SHAPE" hop lancache 5 | median)
			printf '%-30s %8.3fs %9s %6s %8s %8s | %6s %6s %6s %6s (curl) | hop/raw throughput %s\n' \
				"QUIC hop ($HOP_CASE), $SHAPE" "$hop" - - "$(mbps "$RAW_BYTES" "$hop")" - \
				"$(per_gb "$SHAPE" hop lancache 7)" "$(per_gb "$SHAPE" hop lancache 8)" "$floor" \
				"$(per_gb "$SHAPE" hop lancache 10)" "$(ratio "$raw" "$hop")"
		fi
		for CASE in $CASES; do
			lc=$(col "$SHAPE" "$CASE" lancache 5 | median)
			ng=$(col "$SHAPE" "$CASE" nginx 5 | median)
			printf '%-30s %8.3fs %8.3fs %6s %8s %8s | %6s %6s %6s %6s | %6s %6s\n' \
				"$CASE (${NPATHS[$CASE]}p), $SHAPE" "$lc" "$ng" "$(ratio "$lc" "$ng")" \
				"$(mbps "${NARBYTES[$CASE]}" "$lc")" "$(mbps "${NARBYTES[$CASE]}" "$ng")" \
				"$(per_gb "$SHAPE" "$CASE" lancache 7)" "$(per_gb "$SHAPE" "$CASE" lancache 8)" "$floor" \
				"$(per_gb "$SHAPE" "$CASE" lancache 10)" \
				"$(per_gb "$SHAPE" "$CASE" nginx 9)" "$(per_gb "$SHAPE" "$CASE" nginx 10)"
		done
	done
	echo "ratio = lancache time / nginx time (targets: <= 1/0.95 = 1.05 at 1gbit for big and closure; <= 0.8 on compressible)"
	echo "QUIC hop = curl in B fetching the NAR from B's endpoint, no Nix (target: >= 0.9 of raw quic-go's throughput)"
	echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine makes single runs noisy)"
} | tee "$OUT/table.txt"
echo "per-run figures: $RUNS_TSV; all done in $(stamp)"
