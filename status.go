package lancache

import "github.com/lancache/lancache/statusapi"

// The status API's types, defined in package statusapi so that clients
// (`lancache status`, `lancache top`) decode what the daemon encodes
// without importing the daemon.
type (
	// Status is what GET /_lancache/status returns; see statusapi.Status.
	Status = statusapi.Status
	// CacheStatus describes the on-disk NAR cache.
	CacheStatus = statusapi.CacheStatus
	// PeerStatus describes one neighbour.
	PeerStatus = statusapi.PeerStatus
	// TransferStatus describes one NAR transfer.
	TransferStatus = statusapi.TransferStatus
	// Totals are counters since start.
	Totals = statusapi.Totals
	// PeerIndexStatus describes the index of what peers offer.
	PeerIndexStatus = statusapi.PeerIndexStatus
)
