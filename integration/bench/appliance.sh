#!/usr/bin/env bash
# appliance.sh — cache-hit throughput of the lancache appliance against nginx
# serving the same cache directory.
#
# Makes one large signed store path, a binary cache of it (`nix copy --to
# file://...`, the "upstream") and an appliance (`lancache serve --store-root
# none --cache-dir CD --upstream ...`) whose cache is filled by one pull-through.
# Then times `nix copy --from` of the path into fresh chroot stores, from the
# appliance (a cache hit) and from nginx serving CD itself, alternating, and
# prints each run, the medians and the ratio lancache/nginx. Everything runs
# on loopback in a temp dir that is removed at the end. Needs root, nix
# (nix-bin), nginx and go.
#
#   sudo integration/bench/appliance.sh
#   sudo BENCH_COMPRESSION=zstd BENCH_SIZE_MIB=512 integration/bench/appliance.sh
#
# Environment:
#   BENCH_SIZE_MIB     size of the store path (default 1024)
#   BENCH_FILES        number of random files it holds (default 16)
#   BENCH_COMPRESSION  none or zstd (default none): what upstream serves, and
#                      so what the cache keeps and both servers send
#   BENCH_RUNS         timed runs per server (default 5)
#   BENCH_DST_DIR      where the destination stores go (default: the temp dir;
#                      /dev/shm takes the disk out of the measurement)
#   BENCH_KEEP=1       keep the temp dir
#   LANCACHE_BIN       use this binary instead of building ./cmd/lancache
set -euo pipefail

SIZE_MIB=${BENCH_SIZE_MIB:-1024}
FILES=${BENCH_FILES:-16}
COMP=${BENCH_COMPRESSION:-none}
RUNS=${BENCH_RUNS:-5}

cd "$(dirname "$0")/../.."

die() { echo "appliance.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (chroot Nix stores need it)"
for tool in nix nix-store nginx go; do
	command -v "$tool" >/dev/null || die "$tool not found (apt-get install nix-bin nginx)"
done
case $COMP in none | zstd) ;; *) die "BENCH_COMPRESSION=$COMP: want none or zstd" ;; esac

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lancache-bench-appliance.XXXXXX")
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

echo "== make the upstream binary cache (compression=$COMP)"
UP=$WORK/upstream
nix copy --from "$SRC" --to "file://$UP?compression=$COMP" "$P"
rm -rf "$SRC"
CD=$WORK/cache
mkdir -p "$CD"

echo "== start nginx: upstream on one port, the appliance's cache dir on another"
UP_PORT=$(free_port)
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
		listen 127.0.0.1:$UP_PORT;
		root $UP;
	}
	server {
		listen 127.0.0.1:$NGINX_PORT;
		root $CD;
	}
}
EOF
nginx -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
NGINX_PID=$!
wait_http "$UP_PORT" || die "nginx did not come up: $(cat "$WORK/nginx/error.log")"

echo "== start the appliance: --store-root none --cache-dir $CD --upstream http://127.0.0.1:$UP_PORT"
LANCACHE_PORT=$(free_port)
QUIC_PORT=$(free_port)
"$BIN" serve --store-root none --cache-dir "$CD" --cache-max-size "$((SIZE_MIB * 2 + 1024))MiB" \
	--upstream "http://127.0.0.1:$UP_PORT" \
	--http "127.0.0.1:$LANCACHE_PORT" --quic "127.0.0.1:$QUIC_PORT" \
	--state-dir "$WORK/state" --trusted-public-keys "$KEY" --no-mdns \
	>"$WORK/lancache.log" 2>&1 &
LANCACHE_PID=$!
wait_http "$LANCACHE_PORT" || die "lancache did not come up: $(cat "$WORK/lancache.log")"
wait_http "$NGINX_PORT" || die "nginx did not serve $CD: $(cat "$WORK/nginx/error.log")"

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

url_of() {
	case $1 in
	nginx) echo "http://127.0.0.1:$NGINX_PORT" ;;
	lancache) echo "http://127.0.0.1:$LANCACHE_PORT" ;;
	esac
}

echo "== fill the cache: one pull-through from upstream (untimed for the ratio)"
copy_from pull-through "$(url_of lancache)" 0
ls "$CD"/*.narinfo >/dev/null 2>&1 || die "the appliance did not commit $P to $CD: $(tail -n 20 "$WORK/lancache.log")"
# From here on the upstream must not be asked for NAR bytes again.
UP_NAR=$(find "$UP/nar" -type f -printf '%s\n')
mv "$UP/nar" "$UP/nar.moved"

echo "== warm-up (untimed): page cache, first connections"
for s in nginx lancache; do copy_from "$s" "$(url_of "$s")" 0 >/dev/null; done
rm -f "$WORK"/times-nginx "$WORK"/times-lancache

echo "== $RUNS timed runs per server, order alternating"
for run in $(seq 1 "$RUNS"); do
	order="nginx lancache"
	[ $((run % 2)) -eq 0 ] && order="lancache nginx"
	for s in $order; do copy_from "$s" "$(url_of "$s")" "$run"; done
done

echo "== results: nix copy of a ${SIZE_MIB} MiB path ($((UP_NAR / 1048576)) MiB file, compression=$COMP), $RUNS runs, $(nproc) cores"
for s in nginx lancache; do
	printf 'median %-9s %8.3f s\n' "$s" "$(median <"$WORK/times-$s")"
done
ratio=$(awk -v l="$(median <"$WORK/times-lancache")" -v n="$(median <"$WORK/times-nginx")" 'BEGIN { printf "%.3f", l / n }')
echo "ratio lancache/nginx: $ratio (target <= 1.2)"
