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

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

need_root "chroot Nix stores need it"
need_tools "apt-get install nix-bin nginx" nix nix-store nginx go
case $COMP in none | zstd) ;; *) die "BENCH_COMPRESSION=$COMP: want none or zstd" ;; esac

bench_init lancache-bench-appliance
make_dsts

echo "== build lancache"
build_lancache

make_store_path "$SIZE_MIB" "$FILES"
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
start_nginx "$UP_PORT" "$UP" "$NGINX_PORT" "$CD"

echo "== start the appliance: --store-root none --cache-dir $CD --upstream http://127.0.0.1:$UP_PORT"
LANCACHE_PORT=$(free_port)
QUIC_PORT=$(free_port)
start_lancache "$LANCACHE_PORT" --store-root none --cache-dir "$CD" --cache-max-size "$((SIZE_MIB * 2 + 1024))MiB" \
	--upstream "http://127.0.0.1:$UP_PORT" \
	--http "127.0.0.1:$LANCACHE_PORT" --quic "127.0.0.1:$QUIC_PORT" \
	--state-dir "$WORK/state" --trusted-public-keys "$KEY" --no-mdns
wait_http "$NGINX_PORT" || die "nginx did not serve $CD: $(cat "$WORK/nginx/error.log")"

trust_key

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
for s in nginx lancache; do copy_run "$s" 0 >/dev/null; done
rm -f "$WORK"/times-nginx "$WORK"/times-lancache

echo "== $RUNS timed runs per server, order alternating"
timed_runs "$RUNS" copy_run nginx lancache

echo "== results: nix copy of a ${SIZE_MIB} MiB path ($((UP_NAR / 1048576)) MiB file, compression=$COMP), $RUNS runs, $(nproc) cores"
for s in nginx lancache; do
	printf 'median %-9s %8.3f s\n' "$s" "$(median <"$WORK/times-$s")"
done
ratio=$(ratio "$(median <"$WORK/times-lancache")" "$(median <"$WORK/times-nginx")")
echo "ratio lancache/nginx: $ratio (target <= 1.2)"
