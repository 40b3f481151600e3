# shellcheck shell=bash
# lib.sh — what the benchmark scripts in integration/bench share. Each
# sources it first thing:
#
#   . "$(dirname "$0")/lib.sh"
#
# Sourcing only defines functions, BENCH_NAME and the (empty) cleanup lists;
# nothing runs until bench_init. The functions use these globals, set by
# the functions named:
#
#   WORK   the temp work dir (bench_init)
#   BIN    the lancache binary (build_lancache)
#   SRC    a chroot Nix store holding P (make_store_path)
#   P      one signed store path in SRC (make_store_path)
#   KEY    the public key P is signed with (make_store_path)
#   DSTS   where copy_from puts its destination stores (make_dsts)
#
# and, from the script, SIZE_MIB (the size of P, for copy_from's MiB/s).
#
# Every process a script starts, and everything it makes outside WORK, is
# registered with bench_proc or bench_on_exit, so that bench_cleanup (run on
# exit, on SIGINT and on SIGTERM) leaves nothing behind.

# The script's name, for messages.
BENCH_NAME=$(basename "$0")

# die MSG...: print "NAME: MSG" on stderr and exit 1 (which runs cleanup).
die() {
	echo "$BENCH_NAME: $*" >&2
	exit 1
}

# need_root WHY: die unless running as root; WHY says what needs it.
need_root() { [ "$(id -u)" -eq 0 ] || die "run as root ($1)"; }

# need_tools HINT TOOL...: die unless every TOOL is on PATH; HINT says how
# to install them.
need_tools() {
	local hint=$1 tool
	shift
	for tool in "$@"; do
		command -v "$tool" >/dev/null || die "$tool not found ($hint)"
	done
}

## Cleanup hooks

BENCH_PIDS=()  # processes to stop on exit, in the order started
BENCH_SIGS=()  # the signal that asks each to stop
BENCH_HOOKS=() # commands to run on exit (quoted), in the order registered

# bench_proc PID [SIGNAL]: stop process PID on exit: send SIGNAL (default
# TERM), give it 10 s, then SIGKILL, and reap it.
bench_proc() {
	BENCH_PIDS+=("$1")
	BENCH_SIGS+=("${2:-TERM}")
}

# bench_on_exit CMD [ARG...]: run CMD ARG... on exit, after every process
# is stopped; hooks run last registered first, errors ignored.
bench_on_exit() { BENCH_HOOKS+=("$(printf '%q ' "$@")"); }

# bench_cleanup: stop the processes (all signalled first, then each
# awaited), run the hooks, then remove WORK unless BENCH_KEEP=1.
bench_cleanup() {
	set +e
	local i pid
	for i in "${!BENCH_PIDS[@]}"; do
		kill -"${BENCH_SIGS[i]}" "${BENCH_PIDS[i]}" 2>/dev/null
	done
	for pid in "${BENCH_PIDS[@]}"; do
		for _ in $(seq 1 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	for ((i = ${#BENCH_HOOKS[@]} - 1; i >= 0; i--)); do
		eval "${BENCH_HOOKS[i]}"
	done
	[ -n "${WORK:-}" ] || return 0
	if [ "${BENCH_KEEP:-}" = 1 ]; then
		echo "kept $WORK"
	else
		chmod -R u+w "$WORK" 2>/dev/null
		rm -rf "$WORK"
	fi
}

## Set-up

# bench_init PREFIX: cd to the repository root; make the work dir
# ${TMPDIR:-/tmp}/PREFIX.XXXXXX as WORK; install the traps (bench_cleanup on
# exit, exit 130 on SIGINT and SIGTERM); and give Nix a private environment:
# no substituters, no daemon, no narinfo caching, and its narinfo cache and
# user config under WORK (HOME stays, so that go finds its module cache).
bench_init() {
	cd "$(dirname "$0")/../.." || exit
	WORK=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
	trap bench_cleanup EXIT
	trap 'exit 130' INT TERM
	export NIX_CONFIG='build-users-group =
sandbox = false
experimental-features = nix-command
substituters =
narinfo-cache-negative-ttl = 0
narinfo-cache-positive-ttl = 0'
	export XDG_CACHE_HOME=$WORK/home/cache XDG_CONFIG_HOME=$WORK/home/config
	unset NIX_REMOTE NIX_PATH
	mkdir -p "$XDG_CACHE_HOME" "$XDG_CONFIG_HOME"
}

# build_lancache: set BIN to $LANCACHE_BIN, or else build ./cmd/lancache
# into WORK; print its version.
build_lancache() {
	if [ -n "${LANCACHE_BIN:-}" ]; then
		BIN=$LANCACHE_BIN
	else
		BIN=$WORK/lancache
		go build -o "$BIN" ./cmd/lancache
	fi
	"$BIN" version || true
}

# make_store_path SIZE_MIB FILES: make a chroot store SRC holding one path P
# of FILES random files, SIZE_MIB in all, signed with a fresh key (public
# half in KEY, secret in $WORK/sk).
make_store_path() {
	local size_mib=$1 files=$2 per i
	echo "== make a ${size_mib} MiB store path of $files random files"
	mkdir -p "$WORK/payload"
	per=$((size_mib * 1024 / files))
	for i in $(seq 1 "$files"); do
		head -c "${per}K" /dev/urandom >"$WORK/payload/file-$i"
	done
	SRC=$WORK/src
	P=$(nix-store --store "$SRC" --add "$WORK/payload")
	rm -rf "$WORK/payload"
	nix-store --generate-binary-cache-key bench-1 "$WORK/sk" "$WORK/pk"
	KEY=$(cat "$WORK/pk")
	nix store sign --store "$SRC" -k "$WORK/sk" "$P"
}

# trust_key: make Nix trust KEY from here on.
trust_key() {
	NIX_CONFIG="$NIX_CONFIG
trusted-public-keys = $KEY"
}

## Servers on loopback

# free_port prints a loopback TCP port nobody listens on right now.
free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
}

# wait_http PORT: wait up to 30 s until GET /nix-cache-info on
# 127.0.0.1:PORT answers 200.
wait_http() {
	local i
	for i in $(seq 1 300); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1" &&
			printf 'GET /nix-cache-info HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 &&
			head -n1 <&3 | grep -q ' 200 ') 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# nginx_conf WORKERS ADDR DIR [ADDR DIR]...: write $WORK/nginx/nginx.conf
# (logs and pid beside it) for WORKERS worker processes ("auto" for one a
# core) serving each DIR as static files on ADDR (HOST:PORT), sendfile on.
nginx_conf() {
	local workers=$1 servers=
	shift
	while [ $# -ge 2 ]; do
		servers="$servers
	server {
		listen $1;
		root $2;
	}"
		shift 2
	done
	mkdir -p "$WORK/nginx"
	cat >"$WORK/nginx/nginx.conf" <<EOF
user root root;
worker_processes $workers;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 64; }
http {
	access_log off;
	sendfile on;
	tcp_nopush on;
	default_type application/octet-stream;
	client_body_temp_path $WORK/nginx/body;
	proxy_temp_path $WORK/nginx/proxy;
	fastcgi_temp_path $WORK/nginx/fastcgi;
	uwsgi_temp_path $WORK/nginx/uwsgi;
	scgi_temp_path $WORK/nginx/scgi;$servers
}
EOF
}

# start_nginx PORT DIR [PORT DIR]...: start nginx (nginx_conf) serving each
# DIR as static files on 127.0.0.1:PORT; stop it with SIGQUIT on exit; wait
# for the first PORT to answer.
start_nginx() {
	local first=$1 args=()
	while [ $# -ge 2 ]; do
		args+=("127.0.0.1:$1" "$2")
		shift 2
	done
	nginx_conf auto "${args[@]}"
	nginx -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
	bench_proc $! QUIT
	wait_http "$first" || die "nginx did not come up: $(cat "$WORK/nginx/error.log")"
}

# start_lancache PORT SERVE_ARG...: start `$BIN serve SERVE_ARG...` (which
# should listen for HTTP on 127.0.0.1:PORT), logging to $WORK/lancache.log;
# stop it on exit; wait for PORT to answer.
start_lancache() {
	local port=$1
	shift
	"$BIN" serve "$@" >"$WORK/lancache.log" 2>&1 &
	bench_proc $!
	wait_http "$port" || die "lancache did not come up: $(cat "$WORK/lancache.log")"
}

## Network namespaces

# netns_bridge NS: make network namespace NS holding bridge br0 (up, no
# address), deleted on exit with every veth in it.
netns_bridge() {
	ip netns add "$1"
	bench_on_exit ip netns del "$1"
	ip -n "$1" link set lo up
	ip -n "$1" link add br0 type bridge
	ip -n "$1" link set br0 up
}

# netns_host NS BRIDGE_NS ADDR/LEN: make network namespace NS (deleted on
# exit) with lo and eth0 up, eth0 holding ADDR/LEN, one end of a veth whose
# other end, named NS, is a port of br0 in BRIDGE_NS.
netns_host() {
	local ns=$1 br=$2 addr=$3
	ip netns add "$ns"
	bench_on_exit ip netns del "$ns"
	ip link add "${ns}e" netns "$ns" type veth peer name "$ns" netns "$br"
	ip -n "$ns" link set "${ns}e" name eth0
	ip -n "$ns" link set lo up
	ip -n "$ns" addr add "$addr" dev eth0
	ip -n "$ns" link set eth0 up
	ip -n "$br" link set "$ns" master br0
	ip -n "$br" link set "$ns" up
}

# shape_links RATE NS:DEV...: shape the egress of each DEV in namespace NS
# with a token bucket (tc tbf) of RATE (a tc rate such as 1gbit or
# 2500mbit; burst 1 ms of RATE, at least 64 KiB; queue ${TBF_LATENCY:-10ms}),
# or take the shaping off with RATE "none". Shaping both ends of a veth
# shapes both directions.
shape_links() {
	local rate=$1 nsdev burst
	shift
	if [ "$rate" != none ]; then
		burst=$(awk -v r="$rate" 'BEGIN {
			n = r + 0; u = tolower(substr(r, length(n "") + 1))
			m = u == "kbit" ? 1e3 : u == "mbit" ? 1e6 : u == "gbit" ? 1e9 : u == "bit" ? 1 : -1
			if (n <= 0 || m < 0) exit 1
			b = n * m / 8 / 1000; if (b < 65536) b = 65536
			printf "%d", b }') || die "rate $rate: want a number and kbit, mbit or gbit (e.g. 2500mbit)"
	fi
	for nsdev in "$@"; do
		if [ "$rate" = none ]; then
			tc -n "${nsdev%%:*}" qdisc del dev "${nsdev#*:}" root 2>/dev/null || true
		else
			tc -n "${nsdev%%:*}" qdisc replace dev "${nsdev#*:}" root tbf rate "$rate" burst "$burst" latency "${TBF_LATENCY:-10ms}"
		fi
	done
}

# wait_inventory NS URL N LOG: wait up to 30 s until the daemon whose
# endpoint in namespace NS is URL lists connected peers advertising N paths
# or more in all; die with the tail of LOG if it does not.
wait_inventory() {
	local ns=$1 url=$2 want=$3 log=$4 paths=0
	for _ in $(seq 1 300); do
		paths=$(ip netns exec "$ns" curl -fsS "$url/_lancache/status" 2>/dev/null |
			jq '[.peers[] | select(.state == "connected") | .paths_advertised] | add // 0' 2>/dev/null || echo 0)
		[ "$paths" -ge "$want" ] && return 0
		sleep 0.1
	done
	die "the daemon in $ns sees $paths paths at its peers after 30 s, want $want: $(tail -n 5 "$log")"
}

## Timing

now() { date +%s.%N; }

# elapsed T0 T1: the seconds from T0 to T1 (both from now), to the ms.
elapsed() { awk -v t0="$1" -v t1="$2" 'BEGIN { printf "%.3f", t1 - t0 }'; }

# median: the median of the numbers on stdin, one a line.
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# minimum: the least of the numbers on stdin, one a line.
minimum() { sort -g | head -n1; }

# ticks PID: the CPU time (user + system, in clock ticks) of a process.
ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

# ratio A B: A / B to three decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

# timed_runs RUNS FUNC ITEM...: for each run 1..RUNS, call FUNC ITEM RUN for
# every ITEM, in the given order on odd runs and reversed on even ones.
timed_runs() {
	local runs=$1 func=$2 run i
	shift 2
	local items=("$@")
	for run in $(seq 1 "$runs"); do
		if [ $((run % 2)) -eq 1 ]; then
			for ((i = 0; i < ${#items[@]}; i++)); do "$func" "${items[i]}" "$run"; done
		else
			for ((i = ${#items[@]} - 1; i >= 0; i--)); do "$func" "${items[i]}" "$run"; done
		fi
	done
}

## nix copy into fresh chroot stores

# make_dsts: make DSTS, under $BENCH_DST_DIR if set (/dev/shm takes the disk
# out of the measurement) or else WORK; removed on exit even with BENCH_KEEP.
make_dsts() {
	DSTS=$(mktemp -d "${BENCH_DST_DIR:-$WORK}/lancache-bench-dst.XXXXXX")
	bench_on_exit rm -rf "$DSTS"
}

# copy_from NAME URL RUN: time one nix copy of P from URL into a fresh
# chroot store under DSTS, check it, print the run and add the seconds to
# $WORK/times-NAME.
copy_from() {
	local name=$1 url=$2 run=$3 dst t0 t1 secs
	dst=$DSTS/$name-$run
	export XDG_CACHE_HOME=$WORK/home/cache-$name-$run
	sync # start without a writeback backlog from the previous run
	t0=$(now)
	nix copy --from "$url" --to "$dst" "$P" 2>>"$WORK/nix-copy.log" ||
		die "nix copy from $url failed: $(tail -n 5 "$WORK/nix-copy.log")"
	t1=$(now)
	nix-store --store "$dst" --verify-path "$P"
	secs=$(elapsed "$t0" "$t1")
	printf 'run %d  %-9s %8.3f s  %7.1f MiB/s\n' "$run" "$name" "$secs" "$(awk -v m="${SIZE_MIB:?}" -v s="$secs" 'BEGIN { print m / s }')"
	echo "$secs" >>"$WORK/times-$name"
	rm -rf "$dst" "$XDG_CACHE_HOME"
}

# copy_run NAME RUN: copy_from NAME "$(url_of NAME)" RUN, with url_of NAME
# (defined by the script) printing the URL of server NAME.
copy_run() { copy_from "$1" "$(url_of "$1")" "$2"; }
