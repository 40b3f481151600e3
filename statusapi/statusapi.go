package statusapi

import "time"

// Routes of the status API on the daemon's HTTP listener.
const (
	// StatusPath answers GET with one Status document (application/json).
	StatusPath = "/_lancache/status"
	// EventsPath streams Status documents as Server-Sent Events
	// (text/event-stream), one "data: <json>" event per snapshot.
	EventsPath = "/_lancache/events"
	// MetricsPath serves Prometheus metrics.
	MetricsPath = "/metrics"
)

// Status is what GET StatusPath returns: a read-only snapshot of the node
// for `lancache status`, `lancache top` and monitoring. It carries no
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

// PeerState is the state of the node's link to a neighbour.
type PeerState string

// Peer states.
const (
	// StateConnected: a QUIC connection is up and authenticated.
	StateConnected PeerState = "connected"
	// StateConnecting: a static peer being dialed for the first time or
	// again after a drop.
	StateConnecting PeerState = "connecting"
	// StateBackoff: the last dial failed (unreachable, refused, wrong
	// identity or fleet); the node redials later.
	StateBackoff PeerState = "backoff"
)

// PeerStatus describes one neighbour.
type PeerStatus struct {
	ID               string     `json:"id"`
	Name             string     `json:"name"`
	Address          string     `json:"address"`
	State            PeerState  `json:"state"`
	RTTMillis        float64    `json:"rtt_ms"`
	PathsAdvertised  int        `json:"paths_advertised"`
	BytesFromPeer    uint64     `json:"bytes_from_peer"`
	BytesToPeer      uint64     `json:"bytes_to_peer"`
	BlocklistedUntil *time.Time `json:"blocklisted_until,omitempty"`
	Static           bool       `json:"static"`
}

// Source is where the bytes of a transfer come from.
type Source string

// Transfer sources.
const (
	// SourcePeer: a neighbour, over QUIC; TransferStatus.Peer names it.
	SourcePeer Source = "peer"
	// SourceUpstream: an upstream binary cache (pull-through).
	SourceUpstream Source = "upstream"
	// SourceCache: this node's on-disk NAR cache.
	SourceCache Source = "cache"
	// SourceStore: this node's Nix store.
	SourceStore Source = "store"
)

// Result is how a transfer ended.
type Result string

// Transfer results.
const (
	// ResultActive is the result of a transfer still in progress: the
	// field is empty (and omitted from the JSON).
	ResultActive Result = ""
	// ResultOK: every byte arrived and matched the signed NarHash.
	ResultOK Result = "ok"
	// ResultHashMismatch: the bytes did not match the signed NarHash; the
	// download was aborted and the source blocklisted.
	ResultHashMismatch Result = "hash-mismatch"
	// ResultCanceled: the request was cancelled before the end (its
	// client's connection closed, or the daemon shut down).
	ResultCanceled Result = "canceled"
	// ResultFailed: any other failure (no source left, network, timeout).
	ResultFailed Result = "failed"
)

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
	Hash       string `json:"hash"`
	Name       string `json:"name"`
	Source     Source `json:"source"`
	Peer       string `json:"peer,omitempty"` // the serving peer's name (or id), with SourcePeer
	BytesDone  int64  `json:"bytes_done"`
	BytesTotal int64  `json:"bytes_total"`
	// RateBps is the current rate: a moving average over the last few
	// seconds while active; for a finished transfer, its average.
	RateBps     float64   `json:"rate_bytes_per_second"`
	Started     time.Time `json:"started"`
	Result      Result    `json:"result,omitempty"`
	Error       string    `json:"error,omitempty"` // why it failed, with a Result other than ResultOK
	ElapsedSecs float64   `json:"elapsed_seconds"`
	Failovers   int       `json:"failovers,omitempty"` // resumes on another peer, with SourcePeer
}

// Active tells whether the transfer is still in progress.
func (t TransferStatus) Active() bool { return t.Result == ResultActive }

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
