package lancache

import "time"

// Status is what GET /_lancache/status returns: a read-only snapshot of the
// node for `lancache status`, `lancache top` and monitoring. It carries no
// secrets and no inventory.
type Status struct {
	ID            string  `json:"id"`
	Name          string  `json:"name"`
	Version       string  `json:"version"`
	UptimeSeconds float64 `json:"uptime_seconds"`
	HTTPAddr      string  `json:"http_addr"`
	QUICAddr      string  `json:"quic_addr,omitempty"`
	Share         string  `json:"share"`
	StoreRoot     string  `json:"store_root,omitempty"`
	StorePaths    int     `json:"store_paths"`
	SharedPaths   int     `json:"shared_paths"`
	// Cache is the on-disk NAR cache, absent when there is none.
	Cache     *CacheStatus     `json:"cache,omitempty"`
	Upstreams []string         `json:"upstreams,omitempty"`
	Peers     []PeerStatus     `json:"peers"`
	PeerIndex PeerIndexStatus  `json:"peer_index"`
	Transfers []TransferStatus `json:"transfers"` // active first, then recent
	Totals    Totals           `json:"totals"`
}

// CacheStatus describes the on-disk NAR cache.
type CacheStatus struct {
	Dir       string `json:"dir"`
	Entries   int    `json:"entries"`
	UsedBytes int64  `json:"used_bytes"`
	MaxBytes  int64  `json:"max_bytes"`
}

// PeerStatus describes one neighbour.
type PeerStatus struct {
	ID               string     `json:"id"`
	Name             string     `json:"name"`
	Address          string     `json:"address"`
	State            string     `json:"state"` // connecting, connected, backoff, refused
	RTTMillis        float64    `json:"rtt_ms"`
	PathsAdvertised  int        `json:"paths_advertised"`
	BytesFromPeer    uint64     `json:"bytes_from_peer"`
	BytesToPeer      uint64     `json:"bytes_to_peer"`
	BlocklistedUntil *time.Time `json:"blocklisted_until,omitempty"`
	Static           bool       `json:"static"`
}

// PeerIndexStatus describes the in-memory index of what peers offer,
// bounded as a whole (see transfer.Config.MaxIndexEntries).
type PeerIndexStatus struct {
	Entries    int `json:"entries"`     // distinct entries held, about 38 bytes each
	MaxEntries int `json:"max_entries"` // the bound
	// OffersDropped counts peer inventories dropped, largest first, to keep
	// within the bound; those peers stay connected but are not asked.
	OffersDropped uint64 `json:"offers_dropped"`
}

// TransferStatus describes one NAR transfer towards this node's Nix (or a
// peer).
type TransferStatus struct {
	Hash        string    `json:"hash"`
	Name        string    `json:"name"`
	Source      string    `json:"source"` // peer, upstream, cache, store
	Peer        string    `json:"peer,omitempty"`
	BytesDone   int64     `json:"bytes_done"`
	BytesTotal  int64     `json:"bytes_total"`
	RateBps     float64   `json:"rate_bytes_per_second"`
	Started     time.Time `json:"started"`
	Result      string    `json:"result,omitempty"` // "" while active; ok, failed, hash-mismatch
	ElapsedSecs float64   `json:"elapsed_seconds"`
}

// Totals are counters since start.
type Totals struct {
	NarInfoHits          uint64 `json:"narinfo_hits"`
	NarInfoMisses        uint64 `json:"narinfo_misses"`
	BytesServedToNix     uint64 `json:"bytes_served_to_nix"`
	BytesFromPeers       uint64 `json:"bytes_from_peers"`
	BytesFromUpstream    uint64 `json:"bytes_from_upstream"`
	BytesServedToPeers   uint64 `json:"bytes_served_to_peers"`
	VerificationFailures uint64 `json:"verification_failures"`
	NarFailures          uint64 `json:"nar_failures"`
	BadRequests          uint64 `json:"bad_requests"`
}
