#!/usr/bin/env bash
# nixcopy.sh — time `nix copy` of one large store path from lancache and
# from nginx serving the same content as a file:// binary cache
# (compression=none), and print each run, the medians and the ratio
# lancache/nginx. Everything runs on loopback in a temp dir that is removed
# at the end. Needs root, nix (nix-bin), nginx and go.
#
#   sudo integration/bench/nixcopy.sh
#
# Environment:
#   BENCH_SIZE_MIB   size of the store path (default 1024)
#   BENCH_FILES      number of random files it holds (default 16)
#   BENCH_RUNS       timed runs per server (default 5)
#   BENCH_FILE=1     also time `nix copy --from file://DIR` (no HTTP at all)
#   BENCH_DST_DIR    where the destination stores go (default: the temp dir;
#                    /dev/shm takes the disk out of the measurement)
#   BENCH_KEEP=1     keep the temp dir
#   LANCACHE_BIN     use this binary instead of building ./cmd/lancache
set -euo pipefail

SIZE_MIB=${BENCH_SIZE_MIB:-1024}
FILES=${BENCH_FILES:-16}
RUNS=${BENCH_RUNS:-5}

cd "$(dirname "$0")/../.."

die() { echo "nixcopy.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (chroot Nix stores need it)"
for tool in nix nix-store nginx go; do
	command -v "$tool" >/dev/null || die "$tool not found (apt-get install nix-bin nginx)"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lancache-bench.XXXXXX")
DSTS=
NGINX_PID=
LANCACHE_PID=
cleanup() {
	set +e
	[ -n "$LANCACHE_PID" ] && kill -TERM "$LANCACHE_PID" 2>/dev/null && wait "$LANCACHE_PID" 2>/dev/null
	[ -n "$NGINX_PID" ] && kill -QUIT "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
	[ -n "$DSTS" ] && rm -rf "$DSTS"
	if [ "${BENCH_KEEP:-}" = 1 ]; then
		echo "kept $WORK"
	else
		chmod -R u+w "$WORK" 2>/dev/null
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export NIX_CONFIG='build-users-group =
sandbox = false
experimental-features = nix-command
substituters =
narinfo-cache-negative-ttl = 0
narinfo-cache-positive-ttl = 0'
# Nix's narinfo cache and user config go to the temp dir (HOME stays, so
# that go finds its module cache).
export XDG_CACHE_HOME=$WORK/home/cache XDG_CONFIG_HOME=$WORK/home/config
unset NIX_REMOTE NIX_PATH
mkdir -p "$XDG_CACHE_HOME" "$XDG_CONFIG_HOME"
DSTS=$(mktemp -d "${BENCH_DST_DIR:-$WORK}/lancache-bench-dst.XXXXXX")

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

# wait_http PORT: wait until GET /nix-cache-info answers 200.
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

now() { date +%s.%N; }

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

echo "== build lancache"
if [ -n "${LANCACHE_BIN:-}" ]; then
	BIN=$LANCACHE_BIN
else
	BIN=$WORK/lancache
	go build -o "$BIN" ./cmd/lancache
fi
"$BIN" version || true

echo "== make a ${SIZE_MIB} MiB store path of $FILES random files"
mkdir -p "$WORK/payload"
per=$((SIZE_MIB * 1024 / FILES))
for i in $(seq 1 "$FILES"); do
	head -c "${per}K" /dev/urandom >"$WORK/payload/file-$i"
done
SRC=$WORK/src
P=$(nix-store --store "$SRC" --add "$WORK/payload")
rm -rf "$WORK/payload"
nix-store --generate-binary-cache-key bench-1 "$WORK/sk" "$WORK/pk"
KEY=$(cat "$WORK/pk")
nix store sign --store "$SRC" -k "$WORK/sk" "$P"
nix path-info --store "$SRC" -S "$P"

echo "== make a file:// binary cache of it (compression=none)"
BC=$WORK/binary-cache
nix copy --from "$SRC" --to "file://$BC?compression=none" "$P"

echo "== start nginx serving $BC"
NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
user root root;
worker_processes auto;
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
	scgi_temp_path $WORK/nginx/scgi;
	server {
		listen 127.0.0.1:$NGINX_PORT;
		root $BC;
	}
}
EOF
nginx -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
NGINX_PID=$!
wait_http "$NGINX_PORT" || die "nginx did not come up: $(cat "$WORK/nginx/error.log")"

echo "== start lancache serving $SRC"
LANCACHE_PORT=$(free_port)
QUIC_PORT=$(free_port)
"$BIN" serve --store-root "$SRC" --http "127.0.0.1:$LANCACHE_PORT" --quic "127.0.0.1:$QUIC_PORT" \
	--state-dir "$WORK/state" --share signed --trusted-public-keys "$KEY" --no-mdns \
	>"$WORK/lancache.log" 2>&1 &
LANCACHE_PID=$!
wait_http "$LANCACHE_PORT" || die "lancache did not come up: $(cat "$WORK/lancache.log")"

NIX_CONFIG="$NIX_CONFIG
trusted-public-keys = $KEY"

# copy_from NAME URL RUN: time one nix copy of $P from URL into a fresh
# chroot store, check it, print and record the seconds.
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
	secs=$(echo "$t1 $t0" | awk '{ printf "%.3f", $1 - $2 }')
	printf 'run %d  %-9s %8.3f s  %7.1f MiB/s\n' "$run" "$name" "$secs" "$(echo "$SIZE_MIB $secs" | awk '{ print $1 / $2 }')"
	echo "$secs" >>"$WORK/times-$name"
	rm -rf "$dst" "$XDG_CACHE_HOME"
}

SERVERS="nginx lancache"
[ "${BENCH_FILE:-}" = 1 ] && SERVERS="$SERVERS file"
url_of() {
	case $1 in
	nginx) echo "http://127.0.0.1:$NGINX_PORT" ;;
	lancache) echo "http://127.0.0.1:$LANCACHE_PORT" ;;
	file) echo "file://$BC" ;;
	esac
}

echo "== warm-up (untimed): page cache, first connections"
for s in $SERVERS; do copy_from "$s" "$(url_of "$s")" 0 >/dev/null; done
rm -f "$WORK"/times-*

echo "== $RUNS timed runs per server, order alternating"
for run in $(seq 1 "$RUNS"); do
	order=$SERVERS
	[ $((run % 2)) -eq 0 ] && order=$(echo "$SERVERS" | tr ' ' '\n' | tac | tr '\n' ' ')
	for s in $order; do copy_from "$s" "$(url_of "$s")" "$run"; done
done

echo "== results: nix copy of $(nix path-info --store "$SRC" -S "$P" | awk '{ printf "%.0f MiB", $2 / 1048576 }'), $RUNS runs, $(nproc) cores"
for s in $SERVERS; do
	printf 'median %-9s %8.3f s   (min %.3f s)\n' "$s" "$(median <"$WORK/times-$s")" "$(sort -g "$WORK/times-$s" | head -n1)"
done
ratio=$(awk -v l="$(median <"$WORK/times-lancache")" -v n="$(median <"$WORK/times-nginx")" 'BEGIN { printf "%.3f", l / n }')
minratio=$(awk -v l="$(sort -g "$WORK/times-lancache" | head -n1)" -v n="$(sort -g "$WORK/times-nginx" | head -n1)" 'BEGIN { printf "%.3f", l / n }')
echo "ratio lancache/nginx: $ratio of medians, $minratio of minimums (target <= 1.2)"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine makes single runs noisy)"
