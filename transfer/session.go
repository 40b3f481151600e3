package transfer

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/lancache/lancache/cache"
)

// session is one connection with a peer that completed the hello.
type session struct {
	n      *Node
	conn   *quic.Conn
	ctrl   *quic.Stream
	id     string
	name   string
	addr   net.Addr
	dialed bool    // this node dialed it
	target *target // the target it was dialed for, if dialed
	since  time.Time

	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{} // closed when run returns

	// policy is what the chunked encoding measured on this session.
	policy sharedPolicy

	// firstInventory is closed once the peer's first inventory snapshot
	// is in the index.
	firstInventory chan struct{}
	inventoryOnce  sync.Once

	ctrlMu  sync.Mutex    // serialises writes to ctrl
	resync  chan struct{} // the peer asked for a new snapshot
	uploads chan struct{} // semaphore of NAR transfers served to the peer
	streams sync.WaitGroup

	active   atomic.Int32 // requests this node has in flight to the peer
	bytesIn  atomic.Int64 // file bytes received from the peer
	bytesOut atomic.Int64 // file bytes sent to the peer
}

// synced reports whether the peer's first inventory has arrived.
func (s *session) synced() bool {
	select {
	case <-s.firstInventory:
		return true
	default:
		return false
	}
}

// dialerID is the id of the node that dialed the connection.
func (s *session) dialerID() string {
	if s.dialed {
		return s.n.ident.id
	}
	return s.id
}

func (s *session) String() string { return s.id[:8] + "/" + s.name }

// connPeerID is the node id of the peer's certificate key.
func connPeerID(conn *quic.Conn) (string, error) {
	cs := conn.ConnectionState().TLS
	if len(cs.PeerCertificates) == 0 {
		return "", errors.New("peer sent no certificate")
	}
	pub, ok := cs.PeerCertificates[0].PublicKey.(ed25519.PublicKey)
	if !ok {
		return "", errors.New("peer key is not ed25519")
	}
	return NodeID(pub), nil
}

// startSession runs the hello exchange on a new connection and registers
// the session. On error the connection is closed with a code saying why.
func (n *Node) startSession(ctx context.Context, conn *quic.Conn, dialed bool) (*session, error) {
	s, code, err := n.handshake(ctx, conn, dialed)
	if err == nil {
		if err = n.register(s); err != nil {
			code = codeTooMany
			switch {
			case errors.Is(err, errDuplicate):
				code = codeDuplicate
			case errors.Is(err, errShutdown):
				code = codeShutdown
			}
		}
	}
	if err != nil {
		msg := err.Error()
		if code == codeFleet {
			// Say it from the refused node's point of view.
			msg = "not in this fleet: fleet keys differ or one side has none"
		}
		conn.CloseWithError(code, clipMsg(msg))
		return nil, err
	}
	n.log.Info("peer connected", "peer", s.id, "name", s.name, "addr", s.addr.String(), "dialed", dialed)
	return s, nil
}

func (n *Node) handshake(ctx context.Context, conn *quic.Conn, dialed bool) (*session, quic.ApplicationErrorCode, error) {
	pid, err := connPeerID(conn)
	if err != nil {
		return nil, codeIdentity, err
	}
	if pid == n.ident.id {
		return nil, codeSelf, errors.New("connected to itself")
	}
	tlsState := conn.ConnectionState().TLS
	myRole, peerRole := roleAcceptor, roleDialer
	if dialed {
		myRole, peerRole = roleDialer, roleAcceptor
	}
	proof, err := fleetProof(n.cfg.FleetKey, &tlsState, myRole)
	if err != nil {
		return nil, codeFleet, err
	}
	mine := (&hello{Version: protocolVersion, Caps: capsNone, ID: n.ident.id, Name: n.cfg.Name, Proof: proof}).marshal()

	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	var ctrl *quic.Stream
	if dialed {
		ctrl, err = conn.OpenStreamSync(hctx)
	} else {
		ctrl, err = conn.AcceptStream(hctx)
	}
	if err != nil {
		return nil, codeProtocol, fmt.Errorf("control stream: %w", err)
	}
	deadline := time.Now().Add(handshakeTimeout)
	ctrl.SetDeadline(deadline)
	if dialed {
		if err := writeFrame(ctrl, typeHello, mine); err != nil {
			return nil, codeProtocol, fmt.Errorf("send hello: %w", err)
		}
	}
	t, p, err := readFrame(ctrl)
	if err == nil && t != typeHello {
		err = fmt.Errorf("%w: frame type %#x before hello", ErrProtocol, t)
	}
	if err != nil {
		return nil, codeProtocol, fmt.Errorf("read hello: %w", err)
	}
	h, err := parseHello(p)
	if err != nil {
		return nil, codeProtocol, fmt.Errorf("hello: %w", err)
	}
	if h.Version != protocolVersion {
		return nil, codeVersion, fmt.Errorf("peer speaks protocol version %d, this node %d", h.Version, protocolVersion)
	}
	if h.ID != pid {
		return nil, codeIdentity, fmt.Errorf("peer claims id %q but its key is %s", h.ID, pid)
	}
	if err := checkFleet(n.cfg.FleetKey, &tlsState, peerRole, h.Proof); err != nil {
		return nil, codeFleet, fmt.Errorf("peer %s (%s): %w", pid, h.Name, err)
	}
	if !dialed {
		if err := writeFrame(ctrl, typeHello, mine); err != nil {
			return nil, codeProtocol, fmt.Errorf("send hello: %w", err)
		}
	}
	ctrl.SetDeadline(time.Time{})

	sctx, scancel := context.WithCancelCause(ctx)
	s := &session{
		n:      n,
		conn:   conn,
		ctrl:   ctrl,
		id:     pid,
		name:   h.Name,
		addr:   conn.RemoteAddr(),
		dialed: dialed,
		since:  time.Now(),
		ctx:    sctx,
		cancel: scancel,
		done:   make(chan struct{}),
		resync: make(chan struct{}, 1),

		firstInventory: make(chan struct{}),
		uploads:        make(chan struct{}, n.cfg.MaxUploadsPerPeer),
	}
	return s, codeNormal, nil
}

// run serves the session until the connection or the node ends, then
// closes the connection and drops the peer's inventory.
func (s *session) run() {
	defer close(s.done)
	stop := context.AfterFunc(s.conn.Context(), func() { s.cancel(context.Cause(s.conn.Context())) })
	defer stop()
	var wg sync.WaitGroup
	wg.Go(func() { s.cancel(s.readControl()) })
	wg.Go(func() { s.cancel(s.writeControl()) })
	wg.Go(func() { s.cancel(s.acceptStreams()) })
	<-s.ctx.Done()
	cause := context.Cause(s.ctx)
	code := codeNormal
	switch {
	case errors.Is(cause, ErrProtocol), errors.Is(cause, errTooManyPaths):
		code = codeProtocol
	case errors.Is(cause, errDuplicate):
		code = codeDuplicate
	case errors.Is(cause, errShutdown):
		code = codeShutdown
	}
	s.conn.CloseWithError(code, clipMsg(cause.Error()))
	wg.Wait()
	s.streams.Wait()
	s.n.unregister(s)
	switch {
	case code == codeProtocol:
		s.n.log.Warn("peer disconnected: protocol violation", "peer", s.id, "name", s.name, "err", cause)
	case isDuplicate(cause):
		s.n.log.Debug("duplicate connection closed", "peer", s.id)
	default:
		s.n.log.Info("peer disconnected", "peer", s.id, "name", s.name, "reason", cause)
	}
}

// errTooManyPaths disconnects a peer whose inventory exceeds MaxPeerPaths.
var errTooManyPaths = errors.New("peer inventory exceeds the limit")

// readControl applies the peer's inventory messages to the index.
func (s *session) readControl() error {
	var (
		synced  bool // a snapshot was applied and no divergence seen since
		seq     uint64
		fp      uint64
		want    int       // paths the peer offers, as last seen
		asked   bool      // asked for a snapshot, none arrived yet
		drops   int       // times the peer's offer was dropped for room
		dropped time.Time // when it last was
	)
	noteDrop := func() {
		synced = false // deltas are ignored until a snapshot fits
		drops++
		dropped = time.Now()
		s.n.log.Warn("peer inventory dropped: the index is full", "peer", s.id, "name", s.name, "paths", want)
	}
	askResync := func(why string, args ...any) error {
		if synced {
			s.n.log.Info("peer inventory diverged, asking for a snapshot", append([]any{"peer", s.id, "why", why}, args...)...)
		}
		synced, asked = false, true
		return s.writeCtrl(typeResync, nil)
	}
	for {
		s.ctrl.SetReadDeadline(time.Now().Add(3*s.n.cfg.KeepAlive + 5*time.Second))
		t, n, err := readHeader(s.ctrl)
		if err != nil {
			return fmt.Errorf("control stream: %w", err)
		}
		if t == typeSnapshot {
			// Decoded as it streams in, straight into the index.
			m, err := s.readSnapshot(n)
			if m != nil {
				want, asked = int(m.Count), false
			}
			if err == nil || errors.Is(err, errOfferDropped) {
				// Whether it fits or not, the peer's inventory is in:
				// narinfo misses no longer wait for it.
				s.inventoryOnce.Do(func() { close(s.firstInventory) })
			}
			switch {
			case errors.Is(err, errOfferDropped):
				noteDrop()
			case err != nil:
				return fmt.Errorf("control stream: snapshot: %w", err)
			default:
				synced, seq, fp = true, m.Seq, m.FP
				s.n.log.Debug("peer inventory snapshot", "peer", s.id, "paths", m.Count, "bytes", n)
			}
			continue
		}
		p, err := readPayload(s.ctrl, t, n)
		if err != nil {
			return fmt.Errorf("control stream: %w", err)
		}
		switch t {
		case typeDelta:
			m, err := parseDelta(p)
			if err != nil {
				return err
			}
			if !synced {
				continue // a snapshot is on its way
			}
			if m.From != seq {
				if err := askResync("sequence gap", "have", seq, "got", m.From); err != nil {
					return err
				}
				continue
			}
			ops := make([]keyOp, len(m.Changes))
			for i, c := range m.Changes {
				ops[i] = keyOp{key: keyOf(c.Hash), remove: c.Removed}
				fp ^= cache.HashKey(c.Hash)
			}
			n, err := s.n.idx.apply(s, ops)
			if errors.Is(err, errOfferDropped) {
				noteDrop()
				continue
			}
			want = n
			if n > s.n.cfg.MaxPeerPaths {
				return fmt.Errorf("%w: %d paths", errTooManyPaths, n)
			}
			seq = m.To
			if fp != m.FP {
				if err := askResync("fingerprint mismatch", "seq", seq); err != nil {
					return err
				}
			}
		case typePing:
			m, err := parsePing(p)
			if err != nil {
				return err
			}
			if synced && (m.Seq != seq || m.FP != fp) {
				if err := askResync("ping disagrees", "seq", seq, "peer_seq", m.Seq); err != nil {
					return err
				}
			}
			// An offer dropped for room (this peer's, or as the largest
			// when another needed room) is asked for again once the index
			// has room for all of it and a cool-down has passed, doubling
			// with each drop: an honest peer crowded out during an attack
			// comes back after it, and offers that keep displacing each
			// other do not churn the index.
			if synced && !s.n.idx.offered(s) {
				noteDrop()
			}
			if !synced && !asked && drops > 0 && want > 0 &&
				time.Since(dropped) >= readmitAfter(drops, s.n.cfg.KeepAlive) && s.n.idx.fits(s, want) {
				s.n.log.Info("index has room again, asking the peer for its inventory", "peer", s.id, "name", s.name, "paths", want)
				if err := askResync("room again"); err != nil {
					return err
				}
			}
		case typeResync:
			select {
			case s.resync <- struct{}{}:
			default:
			}
		default:
			return fmt.Errorf("%w: frame type %#x on the control stream", ErrProtocol, t)
		}
	}
}

// readmitAfter is how long an offer dropped for room the drops-th time
// waits before it is asked for again: 6 keepalive intervals (a minute by
// default), doubling with each drop, at most 30 minutes.
func readmitAfter(drops int, keepAlive time.Duration) time.Duration {
	d := 6 * keepAlive
	for i := 1; i < drops && d < 30*time.Minute; i++ {
		d *= 2
	}
	return min(d, 30*time.Minute)
}

// readSnapshot reads the payload of an n-byte snapshot frame from the
// control stream and makes it the peer's offer, decoding the keys as they
// arrive. An offer the index has no room for is read to its end, so the
// stream stays in step, and errOfferDropped returned.
func (s *session) readSnapshot(n uint32) (*snapshot, error) {
	if n < snapshotHeaderLen {
		return nil, fmt.Errorf("%w: snapshot of %d bytes", ErrProtocol, n)
	}
	var hdr [snapshotHeaderLen]byte
	if _, err := io.ReadFull(s.ctrl, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = fmt.Errorf("%w: truncated snapshot: %w", ErrProtocol, err)
		}
		return nil, err
	}
	m, err := parseSnapshotHeader(hdr[:])
	if err != nil {
		return nil, err
	}
	if int64(m.Count) > int64(s.n.cfg.MaxPeerPaths) {
		return nil, fmt.Errorf("%w: snapshot of %d paths", errTooManyPaths, m.Count)
	}
	size := int64(n) - snapshotHeaderLen
	br := bufio.NewReaderSize(io.LimitReader(s.ctrl, size), 32<<10)
	dec, err := newKeyDecoder(br, size, int(m.Count), m.K)
	if err != nil {
		return nil, err
	}
	if err := s.n.idx.replace(s, int(m.Count), dec); err != nil {
		if errors.Is(err, errOfferDropped) {
			if _, cerr := io.Copy(io.Discard, br); cerr != nil {
				return nil, cerr
			}
		}
		return m, err
	}
	return m, dec.end()
}

// writeCtrl writes one frame to the control stream. Both the writer and
// the reader (resync requests) send on it.
func (s *session) writeCtrl(t byte, payload []byte) error {
	s.ctrlMu.Lock()
	defer s.ctrlMu.Unlock()
	s.ctrl.SetWriteDeadline(time.Now().Add(writeTimeout))
	return writeFrame(s.ctrl, t, payload)
}

// writeControl sends this node's inventory: a snapshot, then deltas as it
// changes, pings in between, and a new snapshot when the peer asks.
func (s *session) writeControl() error {
	inv := s.n.inv
	var seq, fp uint64
	send := func(t byte, payload []byte) error {
		if err := s.writeCtrl(t, payload); err != nil {
			return fmt.Errorf("control stream: %w", err)
		}
		return nil
	}
	snapshot := func() error {
		hs, sq, f := inv.Snapshot()
		keys := keysOf(hs)
		k, data := encodeKeys(keys)
		m := &snapshot{Seq: sq, FP: f, Count: uint32(len(keys)), K: k, Data: data}
		if len(data) > maxSnapshotPayload {
			return fmt.Errorf("inventory of %d paths is too large to send", len(keys))
		}
		seq, fp = sq, f
		return send(typeSnapshot, m.marshal())
	}
	if err := snapshot(); err != nil {
		return err
	}
	tick := time.NewTicker(s.n.cfg.KeepAlive)
	defer tick.Stop()
	for {
		changed := inv.Changed()
		ds, now, f, ok := inv.Since(seq)
		switch {
		case !ok:
			if err := snapshot(); err != nil {
				return err
			}
		case len(ds) > 0:
			for len(ds) > 0 {
				part := ds[:min(len(ds), maxDeltaEntries)]
				ds = ds[len(part):]
				m := &delta{From: seq, To: seq + uint64(len(part)), Changes: part}
				m.FP = fp
				for _, c := range part {
					m.FP ^= cache.HashKey(c.Hash)
				}
				if err := send(typeDelta, m.marshal()); err != nil {
					return err
				}
				seq, fp = m.To, m.FP
			}
			if seq != now || fp != f {
				// Cannot happen with a consistent inventory; heal anyway.
				if err := snapshot(); err != nil {
					return err
				}
			}
		}
		select {
		case <-s.ctx.Done():
			return nil
		case <-changed:
			// Let a burst of changes (a GC, a big download) gather into
			// one message.
			select {
			case <-time.After(50 * time.Millisecond):
			case <-s.ctx.Done():
				return nil
			}
		case <-s.resync:
			if err := snapshot(); err != nil {
				return err
			}
		case <-tick.C:
			if err := send(typePing, (&ping{Seq: seq, FP: fp}).marshal()); err != nil {
				return err
			}
		}
	}
}

// acceptStreams serves the peer's requests, one goroutine per stream; their
// number is bounded by the QUIC stream limit (MaxStreamsPerPeer).
func (s *session) acceptStreams() error {
	for {
		st, err := s.conn.AcceptStream(s.ctx)
		if err != nil {
			if s.ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept stream: %w", err)
		}
		s.streams.Go(func() {
			if err := s.serve(st); err != nil {
				if errors.Is(err, ErrProtocol) {
					s.cancel(err)
				} else {
					s.n.log.Debug("request failed", "peer", s.id, "err", err)
				}
			}
		})
	}
}

// serve answers one request stream.
func (s *session) serve(st *quic.Stream) error {
	st.SetReadDeadline(time.Now().Add(requestTimeout))
	t, p, err := readFrame(st)
	if err == nil {
		err = expectEOF(st)
	}
	if err != nil {
		st.CancelRead(streamCanceled)
		st.CancelWrite(streamCanceled)
		return err
	}
	switch t {
	case typeNarInfoReq:
		h, err := parseNarInfoReq(p)
		if err != nil {
			st.CancelWrite(streamCanceled)
			return err
		}
		return s.serveNarInfo(st, h)
	case typeNarReq:
		m, err := parseNarReq(p)
		if err != nil {
			st.CancelWrite(streamCanceled)
			return err
		}
		return s.serveNAR(st, m)
	}
	st.CancelWrite(streamCanceled)
	return fmt.Errorf("%w: frame type %#x on a request stream", ErrProtocol, t)
}

// expectEOF reads the end of a stream that must carry nothing more.
func expectEOF(r io.Reader) error {
	var b [1]byte
	n, err := r.Read(b[:])
	if n > 0 {
		return fmt.Errorf("%w: data after the message", ErrProtocol)
	}
	if errors.Is(err, io.EOF) {
		return nil
	}
	if err == nil {
		// A Read of 0 bytes without error: ask once more.
		n, err = r.Read(b[:])
		if n > 0 {
			return fmt.Errorf("%w: data after the message", ErrProtocol)
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
	}
	return err
}

func (s *session) serveNarInfo(st *quic.Stream, h cache.Hash) error {
	s.n.narInfosServed.Add(1)
	st.SetWriteDeadline(time.Now().Add(requestTimeout))
	resp := []byte{statusNotFound}
	if s.n.inv.Has(h) {
		ctx, cancel := context.WithTimeout(s.ctx, requestTimeout)
		info, err := s.n.local.NarInfo(ctx, h)
		cancel()
		switch {
		case err == nil:
			text, merr := info.MarshalText()
			if merr != nil || len(text) > cache.MaxNarInfoSize {
				resp = []byte{statusInternal}
				break
			}
			resp = append([]byte{statusOK}, text...)
		case errors.Is(err, cache.ErrNotFound):
		default:
			s.n.log.Warn("local narinfo failed", "hash", h.String(), "err", err)
			resp = []byte{statusInternal}
		}
	}
	if err := writeFrame(st, typeNarInfoResp, resp); err != nil {
		return fmt.Errorf("send narinfo %s: %w", h, err)
	}
	return st.Close()
}

func (s *session) serveNAR(st *quic.Stream, m *narReq) error {
	st.SetWriteDeadline(time.Now().Add(requestTimeout))
	answer := func(status byte) error {
		if err := writeFrame(st, typeNarResp, (&narResp{Status: status}).marshal()); err != nil {
			return err
		}
		return st.Close()
	}
	if !s.n.inv.Has(m.Hash) {
		return answer(statusNotFound)
	}
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	ictx, icancel := context.WithTimeout(ctx, requestTimeout)
	info, err := s.n.local.NarInfo(ictx, m.Hash)
	icancel()
	switch {
	case errors.Is(err, cache.ErrNotFound):
		return answer(statusNotFound)
	case err != nil:
		s.n.log.Warn("local narinfo failed", "hash", m.Hash.String(), "err", err)
		return answer(statusInternal)
	}
	if info.NarHash != m.NarHash || info.NarSize != m.NarSize {
		return answer(statusOtherFile)
	}
	select {
	case s.uploads <- struct{}{}:
		defer func() { <-s.uploads }()
	default:
		return answer(statusBusy)
	}
	want := m.want()
	whole := m.Offset == 0 && want == m.NarSize
	comp := cache.NormCompression(info.Compression)
	dw := &deadlineWriter{st: st, stall: s.n.cfg.StallTimeout, count: &s.bytesOut}
	hdr := narResp{Status: statusOK, Encoding: encNone, Length: want}
	// The header goes out with the first bytes, so that a source failing
	// before it has sent anything is answered statusInternal, not reset.
	lw := &lazyHeader{w: dw}
	var body func(w io.Writer) error
	switch {
	case whole && (comp == "zstd" && m.Accept&acceptZstd != 0 || comp == "xz" && m.Accept&acceptXZ != 0):
		// Send the held compressed file as it is: fewer bytes, no CPU here.
		hdr.Encoding, hdr.Length = encZstd, toEnd
		if comp == "xz" {
			hdr.Encoding = encXZ
		}
		if info.FileSize > 0 {
			hdr.Length = info.FileSize
		}
		body = func(w io.Writer) error { return s.n.local.WriteNAR(ctx, w, info, 0, -1) }
	case comp == "none" && m.Accept&acceptCompress != 0:
		hdr.Encoding, hdr.Length = encChunked, toEnd
		body = func(io.Writer) error {
			// Chunks go straight to the stream: the time a write takes
			// tells whether the link or the CPU is the bottleneck.
			cw := newChunkWriter(lw, s.n.codecs, m.Accept&acceptForce != 0, int64(want))
			cw.policy, cw.shared = s.policy.get(), &s.policy
			if err := s.n.local.WriteNAR(ctx, cw, info, int64(m.Offset), int64(want)); err != nil {
				return err
			}
			return cw.Close()
		}
	case comp == "none":
		body = func(w io.Writer) error { return s.n.local.WriteNAR(ctx, w, info, int64(m.Offset), int64(want)) }
	default:
		// A compressed copy and NAR bytes asked for (a resume, or a
		// requester that takes no compressed form): decode it here.
		body = func(w io.Writer) error { return s.n.writeDecoded(ctx, w, info, int64(m.Offset), int64(want)) }
	}
	lw.hdr = hdr.marshal()
	bw := bufio.NewWriterSize(lw, int(min(256<<10, max(4096, want))))
	var out io.Writer = bw
	var lim *limitWriter
	if hdr.Length != toEnd {
		lim = &limitWriter{w: bw, left: int64(hdr.Length)}
		out = lim
	}
	err = body(out)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil && lim != nil && lim.left != 0 {
		err = fmt.Errorf("local source wrote %d bytes less than the %d announced", lim.left, hdr.Length)
	}
	if err == nil && !lw.sent {
		err = lw.send() // an empty body
	}
	if err != nil {
		if !lw.sent && ctx.Err() == nil {
			s.n.log.Warn("serving NAR failed", "hash", m.Hash.String(), "err", err)
			return answer(statusInternal)
		}
		// Reset, so the peer sees a failure and not a short file.
		st.CancelWrite(streamInternal)
		return fmt.Errorf("serve NAR %s: %w", m.Hash, err)
	}
	return st.Close()
}

// writeDecoded writes NAR bytes [offset, offset+length) of a path held
// compressed, decoding the held file from its start.
func (n *Node) writeDecoded(ctx context.Context, w io.Writer, info *cache.NarInfo, offset, length int64) error {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := n.local.WriteNAR(ctx, pw, info, 0, -1)
		pw.CloseWithError(err)
		done <- err
	}()
	d, err := n.decomp.Reader(info.Compression, bufio.NewReaderSize(pr, 256<<10), info.NarSize)
	if err == nil {
		if _, err = io.CopyN(io.Discard, d, offset); err == nil {
			_, err = io.CopyN(w, d, length)
		}
		d.Close()
	}
	pr.CloseWithError(errors.New("decoding stopped"))
	if werr := <-done; err == nil && werr != nil && !errors.Is(werr, io.ErrClosedPipe) {
		err = werr
	}
	if err != nil {
		return fmt.Errorf("decode held %s file: %w", info.Compression, err)
	}
	return nil
}

// lazyHeader writes hdr as a NarResp frame before the first body byte.
type lazyHeader struct {
	w    io.Writer
	hdr  []byte
	sent bool
}

func (l *lazyHeader) send() error {
	l.sent = true
	return writeFrame(l.w, typeNarResp, l.hdr)
}

func (l *lazyHeader) Write(p []byte) (int, error) {
	if !l.sent {
		if err := l.send(); err != nil {
			return 0, err
		}
	}
	return l.w.Write(p)
}

// deadlineWriter pushes the stream's write deadline forward as bytes go
// out, so a peer that stops reading is given up after the stall timeout.
type deadlineWriter struct {
	st    *quic.Stream
	stall time.Duration
	last  time.Time
	count *atomic.Int64
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	if now := time.Now(); now.Sub(w.last) > w.stall/8 {
		w.st.SetWriteDeadline(now.Add(w.stall))
		w.last = now
	}
	n, err := w.st.Write(p)
	w.count.Add(int64(n))
	return n, err
}

// limitWriter refuses to write past the range a request asked for.
type limitWriter struct {
	w    io.Writer
	left int64
}

func (w *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > w.left {
		return 0, errors.New("local source wrote past the requested range")
	}
	n, err := w.w.Write(p)
	w.left -= int64(n)
	return n, err
}

// clipMsg bounds an error message sent in a CONNECTION_CLOSE frame.
func clipMsg(s string) string {
	const max = 200
	if len(s) > max {
		return s[:max]
	}
	return s
}
