package transfer

import (
	"slices"
	"strings"
	"time"

	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/internal/xfers"
	"github.com/lancache/lancache/statusapi"
)

// PeerStatus describes one peer for the status API and the TUI.
type PeerStatus struct {
	ID     string              `json:"id,omitempty"` // empty until first connected
	Name   string              `json:"name,omitempty"`
	Addr   string              `json:"addr"`
	State  statusapi.PeerState `json:"state"`
	Dialed bool                `json:"dialed"` // this node dialed the connection (an AddPeer target)
	// Targets are the AddPeer addresses that lead to this peer, whether the
	// connection was dialed or accepted; empty for a peer that only dialed
	// in. The caller knows which of them are static (--peer) and which came
	// from mDNS.
	Targets          []string      `json:"targets,omitempty"`
	RTT              time.Duration `json:"rtt_ns"`
	Paths            int           `json:"paths"` // paths it advertises
	BytesIn          int64         `json:"bytes_in"`
	BytesOut         int64         `json:"bytes_out"`
	Active           int           `json:"active"` // requests in flight to it
	ConnectedSince   time.Time     `json:"connected_since,omitzero"`
	HashMismatches   int           `json:"hash_mismatches,omitempty"`
	BlocklistedUntil time.Time     `json:"blocklisted_until,omitzero"`
	LastError        string        `json:"last_error,omitempty"`
}

// Peers lists the connected peers and the static peers not connected, by
// state then name.
func (n *Node) Peers() []PeerStatus {
	now := time.Now()
	n.mu.Lock()
	var out []PeerStatus
	seen := make(map[*target]bool)
	for _, s := range n.sessions {
		ps := PeerStatus{
			ID:             s.id,
			Name:           s.name,
			Addr:           s.addr.String(),
			State:          statusapi.StateConnected,
			Dialed:         s.dialed,
			RTT:            s.conn.ConnectionStats().SmoothedRTT,
			Paths:          n.idx.paths(s),
			BytesIn:        s.bytesIn.Load(),
			BytesOut:       s.bytesOut.Load(),
			Active:         int(s.active.Load()),
			ConnectedSince: s.since,
		}
		for _, t := range n.targets {
			if t.id == s.id || s.target == t {
				seen[t] = true
				ps.Targets = append(ps.Targets, t.addr)
			}
		}
		slices.Sort(ps.Targets)
		out = append(out, ps)
	}
	for _, t := range n.targets {
		if seen[t] {
			continue
		}
		st := t.state
		if st != statusapi.StateBackoff {
			st = statusapi.StateConnecting
		}
		out = append(out, PeerStatus{ID: t.id, Addr: t.addr, State: st, Dialed: true, Targets: []string{t.addr}, LastError: t.lastErr})
	}
	for i := range out {
		if ps := n.peerInfo[out[i].ID]; out[i].ID != "" && ps != nil {
			out[i].HashMismatches = ps.mismatches
			if now.Before(ps.blockedUntil) {
				out[i].BlocklistedUntil = ps.blockedUntil
			}
		}
	}
	n.mu.Unlock()
	slices.SortFunc(out, func(a, b PeerStatus) int {
		if c := strings.Compare(string(a.State), string(b.State)); c != 0 {
			return c
		}
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return strings.Compare(a.Addr, b.Addr)
	})
	return out
}

// IndexStatus describes the index of what peers offer.
type IndexStatus struct {
	Entries       int   `json:"entries"`        // distinct entries held (about 38 bytes each)
	MaxEntries    int   `json:"max_entries"`    // Config.MaxIndexEntries
	OffersDropped int64 `json:"offers_dropped"` // peer inventories dropped because the index was full
}

// PeerIndex describes the index of what peers offer.
func (n *Node) PeerIndex() IndexStatus {
	st := n.idx.stats()
	return IndexStatus{Entries: st.Entries, MaxEntries: st.Budget, OffersDropped: st.Dropped}
}

// HashMismatches is the number of NAR transfers from peers that failed
// verification since the node started.
func (n *Node) HashMismatches() int64 { return n.mismatches.Load() }

// TransferStatus describes one NAR fetched from peers.
type TransferStatus = xfers.Status

// Transfers lists the active transfers and the most recent finished ones,
// newest first.
func (n *Node) Transfers() []TransferStatus { return n.xfers.List() }

// transfers records the Node's NAR fetches for status.
type transfers struct{ *xfers.Tracker }

func (t *transfers) init() { t.Tracker = xfers.NewTracker(nil) }

// transfer is one WriteNAR in progress.
type transfer struct{ x *xfers.Transfer }

func (t *transfers) start(h cache.Hash, name string, size int64) *transfer {
	return &transfer{t.Start(statusapi.SourcePeer, h.String(), name, size)}
}

func (x *transfer) add(n int64)        { x.x.Add(n) }
func (x *transfer) setPeer(s *session) { x.x.SetPeer(s.id, s.name) }
func (x *transfer) restart()           { x.x.Restart() }
func (x *transfer) failover()          { x.x.Failover() }
func (x *transfer) finish(err error)   { x.x.Finish(err) }
