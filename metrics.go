package lancache

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lancache/lancache/statusapi"
)

// metricsCollector exposes the node's status as Prometheus metrics, read at
// scrape time so the counters have one source of truth (Status).
type metricsCollector struct {
	n *Node

	narinfo, narBytes, peerIn, peerOut, upBytes, verifyFail, narFail, badReq *prometheus.Desc
	peers, storePaths, sharedPaths, cacheBytes, cacheMax, cacheEntries       *prometheus.Desc
	transfersActive, uptime, buildInfo                                       *prometheus.Desc
	indexEntries, indexMax, offersDropped                                    *prometheus.Desc
}

func newMetricsCollector(n *Node) *metricsCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("lancache_"+name, help, labels, nil)
	}
	return &metricsCollector{
		n:               n,
		narinfo:         d("narinfo_requests_total", "Narinfo requests from Nix by result.", "result"),
		narBytes:        d("nar_served_bytes_total", "NAR file bytes sent to Nix."),
		peerIn:          d("peer_received_bytes_total", "NAR bytes received from peers."),
		peerOut:         d("peer_sent_bytes_total", "NAR bytes sent to peers."),
		upBytes:         d("upstream_received_bytes_total", "NAR bytes downloaded from upstream caches."),
		verifyFail:      d("verification_failures_total", "NARs whose bytes did not match their signed NarHash."),
		narFail:         d("nar_aborted_total", "NAR responses to Nix aborted mid-stream."),
		badReq:          d("bad_requests_total", "Malformed requests to the binary-cache API."),
		peers:           d("peers", "Known peers by connection state.", "state"),
		storePaths:      d("store_paths", "Valid paths in the local Nix store."),
		sharedPaths:     d("shared_paths", "Local store paths offered under the share policy."),
		cacheBytes:      d("cache_used_bytes", "Bytes used by the on-disk NAR cache."),
		cacheMax:        d("cache_max_bytes", "Size bound of the on-disk NAR cache."),
		cacheEntries:    d("cache_entries", "Entries in the on-disk NAR cache."),
		transfersActive: d("transfers_active", "NAR transfers from peers in progress."),
		uptime:          d("uptime_seconds", "Seconds since the node started."),
		buildInfo:       d("build_info", "Always 1; the version as a label.", "version"),
		indexEntries:    d("peer_index_entries", "Entries in the index of what peers offer (about 38 bytes each)."),
		indexMax:        d("peer_index_max_entries", "Bound of the index of what peers offer."),
		offersDropped:   d("peer_offers_dropped_total", "Peer inventories dropped, largest first, because the index was full."),
	}
}

func (c *metricsCollector) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(c, ch)
}

func (c *metricsCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.n.Status()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	t := s.Totals
	counter(c.narinfo, t.NarInfoHits, "hit")
	counter(c.narinfo, t.NarInfoMisses, "miss")
	counter(c.narBytes, t.BytesServedToNix)
	counter(c.peerIn, t.BytesFromPeers)
	counter(c.peerOut, t.BytesServedToPeers)
	counter(c.upBytes, t.BytesFromUpstream)
	counter(c.verifyFail, t.VerificationFailures)
	counter(c.narFail, t.NarFailures)
	counter(c.badReq, t.BadRequests)
	states := map[statusapi.PeerState]int{statusapi.StateConnected: 0}
	for _, p := range s.Peers {
		states[p.State]++
	}
	for st, k := range states {
		gauge(c.peers, float64(k), string(st))
	}
	gauge(c.storePaths, float64(s.StorePaths))
	gauge(c.sharedPaths, float64(s.SharedPaths))
	if s.Cache != nil {
		gauge(c.cacheBytes, float64(s.Cache.UsedBytes))
		gauge(c.cacheMax, float64(s.Cache.MaxBytes))
		gauge(c.cacheEntries, float64(s.Cache.Entries))
	}
	active := 0
	for _, tr := range s.Transfers {
		if tr.Active() {
			active++
		}
	}
	gauge(c.transfersActive, float64(active))
	gauge(c.uptime, s.UptimeSeconds)
	gauge(c.indexEntries, float64(s.PeerIndex.Entries))
	gauge(c.indexMax, float64(s.PeerIndex.MaxEntries))
	counter(c.offersDropped, s.PeerIndex.OffersDropped)
	gauge(c.buildInfo, 1, s.Version)
}

// metricsHandler serves GET /metrics from a registry of this node's own (no
// global registry: several nodes may share a process).
func (n *Node) metricsHandler() http.Handler {
	return promhttp.HandlerFor(n.registry(), promhttp.HandlerOpts{MaxRequestsInFlight: 4})
}

func (n *Node) registry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newMetricsCollector(n),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}
