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

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

need_root "chroot Nix stores need it"
need_tools "apt-get install nix-bin nginx" nix nix-store nginx go

bench_init lancache-bench
make_dsts

echo "== build lancache"
build_lancache

make_store_path "$SIZE_MIB" "$FILES"
nix path-info --store "$SRC" -S "$P"

echo "== make a file:// binary cache of it (compression=none)"
BC=$WORK/binary-cache
nix copy --from "$SRC" --to "file://$BC?compression=none" "$P"

echo "== start nginx serving $BC"
NGINX_PORT=$(free_port)
start_nginx "$NGINX_PORT" "$BC"

echo "== start lancache serving $SRC"
LANCACHE_PORT=$(free_port)
QUIC_PORT=$(free_port)
start_lancache "$LANCACHE_PORT" --store-root "$SRC" --http "127.0.0.1:$LANCACHE_PORT" --quic "127.0.0.1:$QUIC_PORT" \
	--state-dir "$WORK/state" --share signed --trusted-public-keys "$KEY" --no-mdns

trust_key

SERVERS=(nginx lancache)
[ "${BENCH_FILE:-}" = 1 ] && SERVERS+=(file)
url_of() {
	case $1 in
	nginx) echo "http://127.0.0.1:$NGINX_PORT" ;;
	lancache) echo "http://127.0.0.1:$LANCACHE_PORT" ;;
	file) echo "file://$BC" ;;
	esac
}

echo "== warm-up (untimed): page cache, first connections"
for s in "${SERVERS[@]}"; do copy_run "$s" 0 >/dev/null; done
rm -f "$WORK"/times-*

echo "== $RUNS timed runs per server, order alternating"
timed_runs "$RUNS" copy_run "${SERVERS[@]}"

echo "== results: nix copy of $(nix path-info --store "$SRC" -S "$P" | awk '{ printf "%.0f MiB", $2 / 1048576 }'), $RUNS runs, $(nproc) cores"
for s in "${SERVERS[@]}"; do
	printf 'median %-9s %8.3f s   (min %.3f s)\n' "$s" "$(median <"$WORK/times-$s")" "$(minimum <"$WORK/times-$s")"
done
ratio=$(ratio "$(median <"$WORK/times-lancache")" "$(median <"$WORK/times-nginx")")
minratio=$(ratio "$(minimum <"$WORK/times-lancache")" "$(minimum <"$WORK/times-nginx")")
echo "ratio lancache/nginx: $ratio of medians, $minratio of minimums (target <= 1.2)"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine makes single runs noisy)"
