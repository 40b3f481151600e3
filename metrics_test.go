package lancache

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetricsLint(t *testing.T) {
	n, err := New(context.Background(), Config{
		StoreRoot: "none", CacheDir: t.TempDir(), CacheMaxSize: 1 << 20,
		HTTPAddr: "127.0.0.1:0", QUICAddr: "127.0.0.1:0", StateDir: t.TempDir(),
		TrustedPublicKeys: DefaultTrustedPublicKeys, NoMDNS: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	problems, err := testutil.GatherAndLint(n.registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
	count, err := testutil.GatherAndCount(n.registry(), "lancache_narinfo_requests_total", "lancache_cache_max_bytes", "lancache_build_info")
	if err != nil || count != 4 {
		t.Fatalf("lancache metrics: %d series, %v", count, err)
	}
	count, err = testutil.GatherAndCount(n.registry(), "lancache_peer_index_entries", "lancache_peer_index_max_entries", "lancache_peer_offers_dropped_total")
	if err != nil || count != 3 {
		t.Fatalf("peer index metrics: %d series, %v", count, err)
	}
}
