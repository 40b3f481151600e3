package tui

import (
	"time"

	"github.com/lancache/lancache/statusapi"
)

// testNow is the fixed clock of the tests.
var testNow = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func fixedNow() time.Time { return testNow }

const (
	kib = 1 << 10
	mib = 1 << 20
	gib = 1 << 30
)

// emptyStatus is a node that has just started and sees nobody.
func emptyStatus() *statusapi.Status {
	return &statusapi.Status{
		ID:            "k51qzi5uqu5dlvj2baxnqndepeb86cbk3ng7n3i46uzyxzyqj2xjonzllnv0v8",
		Name:          "alpha",
		Version:       "0.1.0",
		UptimeSeconds: 42,
		HTTPAddr:      "127.0.0.1:37515",
		Share:         "signed",
		StoreRoot:     "/",
		StorePaths:    5321,
		SharedPaths:   4870,
		Peers:         []statusapi.PeerStatus{},
		Transfers:     []statusapi.TransferStatus{},
	}
}

// busyStatus is a node with several neighbours, three transfers in progress
// (one of unknown size)
// and some finished ones, including a hash mismatch.
func busyStatus() *statusapi.Status {
	st := emptyStatus()
	st.UptimeSeconds = 2*3600 + 3*60 + 4
	st.Cache = &statusapi.CacheStatus{Dir: "/srv/lancache", Entries: 812, UsedBytes: 3*gib + 200*mib, MaxBytes: 10 * gib}
	blocked := testNow.Add(3*time.Minute + 20*time.Second)
	st.Peers = []statusapi.PeerStatus{
		{ID: "id-charlie", Name: "charlie", Address: "192.168.1.23:37516", State: statusapi.StateConnected, RTTMillis: 12.4, PathsAdvertised: 48213, BytesFromPeer: 120 * mib, BytesToPeer: 2 * gib},
		{ID: "id-bravo", Name: "bravo", Address: "192.168.1.22:37516", State: statusapi.StateConnected, RTTMillis: 0.83, PathsAdvertised: 1234, BytesFromPeer: 1536 * mib, BytesToPeer: 300 * mib},
		{ID: "id-delta", Name: "delta-nas-in-the-basement", Address: "[fd00::1234:5678]:37516", State: statusapi.StateBackoff, RTTMillis: 0, PathsAdvertised: 0, BytesFromPeer: 5 * mib, BlocklistedUntil: &blocked},
	}
	started := testNow.Add(-10 * time.Second)
	st.Transfers = []statusapi.TransferStatus{
		{Hash: "0c4mf3a8r1xcgn3x0lq2hgrw6y6sbfqp", Name: "firefox-128.0.3", Source: statusapi.SourcePeer, Peer: "bravo", BytesDone: 41 * mib, BytesTotal: 102 * mib, RateBps: 12.5 * mib, Started: started, ElapsedSecs: 10},
		{Hash: "1bq2y9n5wq8lk0sa2xvdd3f2r7s6yq7a", Name: "glibc-2.40-36", Source: statusapi.SourceUpstream, BytesDone: 2 * mib, BytesTotal: 8 * mib, RateBps: 800 * kib, Started: started, ElapsedSecs: 10},
		{Hash: "5zx1c2v3b4n5m6a7s8d9f0g1h2j3k4l5", Name: "nix-2.24.9", Source: statusapi.SourceCache, BytesDone: 3 * mib, Started: started, ElapsedSecs: 10},
		{Hash: "2sd8h0yckqz4ix9nmb3v1a1f3m8dwl3c", Name: "hello-2.12.1", Source: statusapi.SourcePeer, Peer: "charlie", BytesDone: 260 * kib, BytesTotal: 260 * kib, Started: testNow.Add(-time.Minute), ElapsedSecs: 0.4, Result: statusapi.ResultOK},
		{Hash: "3jz9x1f2a8lq0c5m6n7b8v9c0x1z2a3s", Name: "openssl-3.3.2", Source: statusapi.SourcePeer, Peer: "delta-nas-in-the-basement", BytesDone: 3 * mib, BytesTotal: 6 * mib, Started: testNow.Add(-40 * time.Second), ElapsedSecs: 2.5, Result: statusapi.ResultHashMismatch},
		{Hash: "4kq0w2e3r4t5y6u7i8o9p0a1s2d3f4g5", Name: "python3-3.12.7", Source: statusapi.SourceUpstream, BytesDone: 30 * mib, BytesTotal: 30 * mib, Started: testNow.Add(-30 * time.Second), ElapsedSecs: 14, Result: statusapi.ResultOK},
	}
	st.Totals = statusapi.Totals{
		NarInfoHits:          412,
		NarInfoMisses:        88,
		BytesServedToNix:     5*gib + 300*mib,
		BytesFromPeers:       1661 * mib,
		BytesFromUpstream:    900 * mib,
		BytesServedToPeers:   2*gib + 300*mib,
		VerificationFailures: 1,
	}
	return st
}
