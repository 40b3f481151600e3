// Copyright the lancache authors
// SPDX-License-Identifier: MIT

package mdns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Port is the mDNS port.
const Port = 5353

// MaxPacket is the largest mDNS packet read or sent (RFC 6762 §17: 9000
// bytes including headers). Longer datagrams are dropped.
const MaxPacket = 9000

// maxQuestions bounds the questions of one query that get an answer.
const maxQuestions = 16

// Answer rate limit: a flood of queries must not turn this host into a
// packet cannon. The budget is far above what a LAN of hundreds of nodes
// querying every few seconds needs.
const (
	answerRate  = 200 // answers per second
	answerBurst = 200
)

var (
	groupV4 = netip.AddrPortFrom(netip.MustParseAddr("224.0.0.251"), Port)
	groupV6 = netip.AddrPortFrom(netip.MustParseAddr("ff02::fb"), Port)
)

// Interface is one network interface the Endpoint joins the mDNS group on.
type Interface struct {
	Index int
	Name  string
	Addrs []netip.Addr // the addresses announced to queriers on this interface
}

// Packet is an mDNS response received on one of the Endpoint's interfaces.
type Packet struct {
	Msg     *dns.Msg
	Src     netip.AddrPort // sender; link-local IPv6 carries the interface as zone
	IfIndex int
	IfName  string
}

// Config configures an Endpoint.
type Config struct {
	Service     Service      // the instance this host answers for
	DisableIPv6 bool         // IPv4 only
	Handler     func(Packet) // called for every response, concurrently from several goroutines; must not block
	Logger      *slog.Logger
}

type ifState struct {
	Interface
	v4, v6 bool // joined the group on this family
}

// Endpoint answers mDNS queries for one Service and sends queries,
// announcements and goodbyes for it on a changing set of interfaces.
//
// It holds two sockets per address family: one bound to port 5353, joined
// to the group on every interface, which answers queries and hears
// announcements; and one on an ephemeral port that sends the queries, so
// that answers come back by unicast to this process even when another
// responder (avahi) shares port 5353 (RFC 6762 §6.7, one-shot queries).
type Endpoint struct {
	cfg Config
	svc Service
	log *slog.Logger

	m4, q4 *ipv4.PacketConn
	m6, q6 *ipv6.PacketConn
	conns  []net.PacketConn

	mu     sync.RWMutex
	ifaces map[int]*ifState // by interface index

	limMu     sync.Mutex
	tokens    float64
	lastToken time.Time

	closed atomic.Bool
	wg     sync.WaitGroup
}

// Listen opens the sockets and starts reading. It joins no group until
// SetInterfaces. Close stops it.
func Listen(cfg Config) (*Endpoint, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Handler == nil {
		cfg.Handler = func(Packet) {}
	}
	e := &Endpoint{
		cfg:       cfg,
		svc:       cfg.Service,
		log:       cfg.Logger,
		ifaces:    make(map[int]*ifState),
		tokens:    answerBurst,
		lastToken: time.Now(),
	}
	if err := e.svc.Init(); err != nil {
		return nil, fmt.Errorf("mdns service: %w", err)
	}

	lc := net.ListenConfig{Control: reuseAddr}
	ctx := context.Background()
	var err4, err6 error
	if m, err := lc.ListenPacket(ctx, "udp4", fmt.Sprintf("0.0.0.0:%d", Port)); err != nil {
		err4 = err
	} else if q, err := net.ListenPacket("udp4", "0.0.0.0:0"); err != nil {
		m.Close()
		err4 = err
	} else {
		e.conns = append(e.conns, m, q)
		e.m4, e.q4 = ipv4.NewPacketConn(m), ipv4.NewPacketConn(q)
		for _, p := range []*ipv4.PacketConn{e.m4, e.q4} {
			err4 = errors.Join(err4,
				p.SetControlMessage(ipv4.FlagInterface, true),
				p.SetMulticastTTL(255),
				p.SetMulticastLoopback(true))
		}
	}
	if err4 != nil {
		e.log.Warn("mDNS over IPv4 unavailable", "err", err4)
		e.m4, e.q4 = nil, nil
	}
	if cfg.DisableIPv6 {
		err6 = errors.New("disabled")
	} else if m, err := lc.ListenPacket(ctx, "udp6", fmt.Sprintf("[::]:%d", Port)); err != nil {
		err6 = err
	} else if q, err := net.ListenPacket("udp6", "[::]:0"); err != nil {
		m.Close()
		err6 = err
	} else {
		e.conns = append(e.conns, m, q)
		e.m6, e.q6 = ipv6.NewPacketConn(m), ipv6.NewPacketConn(q)
		for _, p := range []*ipv6.PacketConn{e.m6, e.q6} {
			err6 = errors.Join(err6,
				p.SetControlMessage(ipv6.FlagInterface, true),
				p.SetMulticastHopLimit(255),
				p.SetMulticastLoopback(true))
		}
	}
	if err6 != nil {
		if !cfg.DisableIPv6 {
			e.log.Info("mDNS over IPv6 unavailable", "err", err6)
		}
		e.m6, e.q6 = nil, nil
	}
	if e.m4 == nil && e.m6 == nil {
		for _, c := range e.conns {
			c.Close()
		}
		return nil, fmt.Errorf("mdns: no socket on port %d: %w", Port, errors.Join(err4, err6))
	}

	if e.m4 != nil {
		e.wg.Add(2)
		go e.read4(e.m4, true)
		go e.read4(e.q4, false)
	}
	if e.m6 != nil {
		e.wg.Add(2)
		go e.read6(e.m6, true)
		go e.read6(e.q6, false)
	}
	return e, nil
}

// Close closes the sockets and waits for the reading goroutines. It does
// not send goodbyes: call Announce(0) first.
func (e *Endpoint) Close() error {
	if e.closed.Swap(true) {
		return nil
	}
	var err error
	for _, c := range e.conns {
		err = errors.Join(err, c.Close())
	}
	e.wg.Wait()
	return err
}

// SetInterfaces makes ifs the interfaces the Endpoint works on: it joins
// the group on new ones, leaves it on those gone, and takes the addresses
// to announce from ifs. A family that cannot join on an interface is
// skipped there.
func (e *Endpoint) SetInterfaces(ifs []Interface) {
	e.mu.Lock()
	defer e.mu.Unlock()
	want := make(map[int]bool, len(ifs))
	for _, ifc := range ifs {
		want[ifc.Index] = true
		st, ok := e.ifaces[ifc.Index]
		if ok && st.Name == ifc.Name {
			st.Addrs = ifc.Addrs
			continue
		}
		if ok {
			e.leave(st)
		}
		st = &ifState{Interface: ifc}
		ni := &net.Interface{Index: ifc.Index, Name: ifc.Name}
		if e.m4 != nil {
			if err := e.m4.JoinGroup(ni, &net.UDPAddr{IP: groupV4.Addr().AsSlice()}); err != nil {
				e.log.Debug("mDNS: cannot join IPv4 group", "iface", ifc.Name, "err", err)
			} else {
				st.v4 = true
			}
		}
		if e.m6 != nil {
			if err := e.m6.JoinGroup(ni, &net.UDPAddr{IP: groupV6.Addr().AsSlice()}); err != nil {
				e.log.Debug("mDNS: cannot join IPv6 group", "iface", ifc.Name, "err", err)
			} else {
				st.v6 = true
			}
		}
		if !st.v4 && !st.v6 {
			e.log.Warn("mDNS: cannot join the multicast group: interface skipped", "iface", ifc.Name)
		}
		e.ifaces[ifc.Index] = st
		e.log.Debug("mDNS: interface added", "iface", ifc.Name, "ipv4", st.v4, "ipv6", st.v6)
	}
	for idx, st := range e.ifaces {
		if !want[idx] {
			e.leave(st)
			delete(e.ifaces, idx)
			e.log.Debug("mDNS: interface removed", "iface", st.Name)
		}
	}
}

func (e *Endpoint) leave(st *ifState) {
	ni := &net.Interface{Index: st.Index, Name: st.Name}
	if st.v4 {
		_ = e.m4.LeaveGroup(ni, &net.UDPAddr{IP: groupV4.Addr().AsSlice()})
	}
	if st.v6 {
		_ = e.m6.LeaveGroup(ni, &net.UDPAddr{IP: groupV6.Addr().AsSlice()})
	}
}

// Query sends a one-shot PTR query for the service on every interface and
// family. Answers reach the Handler. It returns the number of queries sent
// and the errors of those that failed.
func (e *Endpoint) Query() (int, error) {
	m := new(dns.Msg)
	m.SetQuestion(e.svc.serviceAddr, dns.TypePTR)
	m.RecursionDesired = false
	m.Id = 0 // RFC 6762 §18.1
	buf, err := m.Pack()
	if err != nil {
		return 0, fmt.Errorf("pack query: %w", err)
	}
	return e.sendAll(buf, true)
}

// Announce multicasts the service's records on every interface and family,
// with the given TTL: DefaultTTL to announce (RFC 6762 §8.3), 0 to say
// goodbye (§10.1).
func (e *Endpoint) Announce(ttl uint32) (int, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	sent := 0
	var errs error
	for _, st := range e.ifaces {
		buf, err := e.response(0, nil, e.svc.all(st.Addrs, ttl))
		if err != nil {
			errs = errors.Join(errs, err)
			continue
		}
		n, err := e.sendIface(st, buf, false)
		sent += n
		errs = errors.Join(errs, err)
	}
	return sent, errs
}

func (e *Endpoint) sendAll(buf []byte, query bool) (int, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	sent := 0
	var errs error
	for _, st := range e.ifaces {
		n, err := e.sendIface(st, buf, query)
		sent += n
		errs = errors.Join(errs, err)
	}
	return sent, errs
}

// sendIface multicasts buf on one interface, from the query socket (query)
// or from port 5353 (responses must come from it, RFC 6762 §11).
func (e *Endpoint) sendIface(st *ifState, buf []byte, query bool) (int, error) {
	sent := 0
	var errs error
	if st.v4 {
		c := e.m4
		if query {
			c = e.q4
		}
		_, err := c.WriteTo(buf, &ipv4.ControlMessage{IfIndex: st.Index}, net.UDPAddrFromAddrPort(groupV4))
		if err != nil {
			errs = errors.Join(errs, fmt.Errorf("send on %s over IPv4: %w", st.Name, err))
		} else {
			sent++
		}
	}
	if st.v6 {
		c := e.m6
		if query {
			c = e.q6
		}
		dst := net.UDPAddrFromAddrPort(groupV6)
		dst.Zone = st.Name
		_, err := c.WriteTo(buf, &ipv6.ControlMessage{IfIndex: st.Index}, dst)
		if err != nil {
			errs = errors.Join(errs, fmt.Errorf("send on %s over IPv6: %w", st.Name, err))
		} else {
			sent++
		}
	}
	return sent, errs
}

func (e *Endpoint) read4(c *ipv4.PacketConn, shared bool) {
	e.readLoop(shared, true, func(b []byte) (int, int, net.Addr, bool, error) {
		n, cm, src, err := c.ReadFrom(b)
		if cm == nil {
			return n, 0, src, false, err
		}
		return n, cm.IfIndex, src, true, err
	})
}

func (e *Endpoint) read6(c *ipv6.PacketConn, shared bool) {
	e.readLoop(shared, false, func(b []byte) (int, int, net.Addr, bool, error) {
		n, cm, src, err := c.ReadFrom(b)
		if cm == nil {
			return n, 0, src, false, err
		}
		return n, cm.IfIndex, src, true, err
	})
}

// readLoop reads packets with read (which reports the arrival interface
// when the control message has it) until the endpoint closes.
func (e *Endpoint) readLoop(shared, v4 bool, read func([]byte) (n, ifIndex int, src net.Addr, haveIf bool, err error)) {
	defer e.wg.Done()
	buf := make([]byte, MaxPacket+1)
	for {
		n, ifIndex, src, haveIf, err := read(buf)
		if err != nil {
			if e.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			e.log.Debug("mDNS: read", "err", err)
			continue
		}
		if !haveIf || n > MaxPacket {
			continue
		}
		ua, ok := src.(*net.UDPAddr)
		if !ok {
			continue
		}
		e.handle(buf[:n], ua.AddrPort(), ifIndex, shared, v4)
	}
}

// handle processes one packet that arrived on interface ifIndex.
func (e *Endpoint) handle(b []byte, src netip.AddrPort, ifIndex int, shared, v4 bool) {
	e.mu.RLock()
	st, ok := e.ifaces[ifIndex]
	var ifc ifState
	if ok {
		ifc = *st
	}
	e.mu.RUnlock()
	if !ok {
		return // another process joined the group there (IP_MULTICAST_ALL)
	}
	msg := new(dns.Msg)
	if err := msg.Unpack(b); err != nil {
		return
	}
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	if src.Addr().Is6() && src.Addr().IsLinkLocalUnicast() {
		src = netip.AddrPortFrom(src.Addr().WithZone(ifc.Name), src.Port())
	}
	if msg.Response {
		// Responses must come from port 5353 (RFC 6762 §11), except the
		// unicast answers to our one-shot queries.
		if shared && src.Port() != Port {
			return
		}
		e.cfg.Handler(Packet{Msg: msg, Src: src, IfIndex: ifIndex, IfName: ifc.Name})
		return
	}
	if shared {
		e.answer(msg, src, &ifc, v4)
	}
}

// answer replies to a query (RFC 6762 §6): by multicast on the interface
// it came from, or by unicast when the querier asked for it (QU bit) or is
// a one-shot querier on another port than 5353 (§6.7).
func (e *Endpoint) answer(q *dns.Msg, src netip.AddrPort, ifc *ifState, v4 bool) {
	// §18.3, §18.11: ignore other opcodes and response codes. Known-answer
	// lists (TC bit) are not used: the answer is sent in any case.
	if q.Opcode != dns.OpcodeQuery || q.Rcode != 0 || len(q.Question) == 0 {
		return
	}
	legacy := src.Port() != Port
	var multi, uni []dns.RR
	var uniQ []dns.Question
	for i, qu := range q.Question {
		if i >= maxQuestions {
			break
		}
		unicast := legacy || qu.Qclass&(1<<15) != 0
		ttl := uint32(DefaultTTL)
		if legacy {
			ttl = legacyTTL
		}
		rrs := e.svc.Records(qu, ifc.Addrs, ttl)
		if len(rrs) == 0 {
			continue
		}
		if unicast {
			uni = append(uni, rrs...)
			uniQ = append(uniQ, qu)
		} else {
			multi = append(multi, rrs...)
		}
	}
	if len(multi) == 0 && len(uni) == 0 {
		return
	}
	if !e.allow() {
		return
	}
	if len(multi) > 0 {
		buf, err := e.response(0, nil, multi)
		if err == nil {
			st := ifState{Interface: ifc.Interface, v4: v4 && ifc.v4, v6: !v4 && ifc.v6}
			_, err = e.sendIface(&st, buf, false)
		}
		if err != nil {
			e.log.Debug("mDNS: multicast answer", "iface", ifc.Name, "err", err)
		}
	}
	if len(uni) > 0 {
		var qs []dns.Question
		var id uint16
		if legacy {
			// §6.7: a legacy answer repeats the query ID and question.
			id, qs = q.Id, uniQ
		}
		buf, err := e.response(id, qs, uni)
		if err == nil {
			err = e.unicast(buf, src, ifc.Index, v4)
		}
		if err != nil {
			e.log.Debug("mDNS: unicast answer", "to", src, "err", err)
		}
	}
}

func (e *Endpoint) unicast(buf []byte, dst netip.AddrPort, ifIndex int, v4 bool) error {
	ua := net.UDPAddrFromAddrPort(dst)
	var err error
	if v4 {
		_, err = e.m4.WriteTo(buf, &ipv4.ControlMessage{IfIndex: ifIndex}, ua)
	} else {
		_, err = e.m6.WriteTo(buf, &ipv6.ControlMessage{IfIndex: ifIndex}, ua)
	}
	return err
}

// response packs an authoritative response.
func (e *Endpoint) response(id uint16, qs []dns.Question, answer []dns.RR) ([]byte, error) {
	buf, err := newResponse(id, qs, answer).Pack()
	if err != nil {
		return nil, fmt.Errorf("pack response: %w", err)
	}
	if len(buf) > MaxPacket {
		return nil, fmt.Errorf("response of %d bytes exceeds %d", len(buf), MaxPacket)
	}
	return buf, nil
}

// newResponse builds a response following RFC 6762 §18 (as in
// hashicorp/mdns server.go): ID 0 except for legacy unicast, QR and AA set,
// everything else zero.
func newResponse(id uint16, qs []dns.Question, answer []dns.RR) *dns.Msg {
	return &dns.Msg{
		MsgHdr: dns.MsgHdr{
			Id:            id,
			Response:      true,
			Opcode:        dns.OpcodeQuery,
			Authoritative: true,
		},
		Compress: true,
		Question: qs,
		Answer:   answer,
	}
}

// allow takes one token from the answer budget.
func (e *Endpoint) allow() bool {
	e.limMu.Lock()
	defer e.limMu.Unlock()
	now := time.Now()
	e.tokens = min(answerBurst, e.tokens+now.Sub(e.lastToken).Seconds()*answerRate)
	e.lastToken = now
	if e.tokens < 1 {
		return false
	}
	e.tokens--
	return true
}
