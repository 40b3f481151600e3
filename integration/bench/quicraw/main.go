// Command quicraw measures raw quic-go single-stream throughput between two
// hosts, with the TLS and QUIC settings of lancache's peer transport but
// none of its protocol: the ceiling for peer-to-peer NAR transfers. The
// benchmark script integration/bench/p2p.sh runs it between two network
// namespaces, beside the real daemons.
//
//	quicraw -listen 10.231.250.1:4433
//	quicraw -connect 10.231.250.1:4433 -size 1073741824 -runs 5
//	quicraw -sha256 1073741824
//
// The client opens one connection and, per run, one stream on which it asks
// for -size bytes; it prints the seconds each run took, one per line. The
// server sends the bytes from a random buffer; both sides use 256 KiB
// buffers, as the transfer package does.
//
// With -sha256 BYTES it hashes that many bytes of an in-memory buffer with
// crypto/sha256 (what the daemons verify NARs with) and prints the CPU
// seconds (user + system) per GB it took: the sha256 part of the receiving
// daemon's CPU floor that integration/bench/peerpath.sh prints.
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/lancache/lancache/transfer"
)

const bufSize = 256 << 10

func main() {
	listen := flag.String("listen", "", "serve on this UDP address")
	connect := flag.String("connect", "", "fetch from the server at this UDP address")
	size := flag.Int64("size", 1<<30, "bytes per run")
	runs := flag.Int("runs", 1, "runs, one stream each, on one connection")
	hashBytes := flag.Int64("sha256", 0, "hash this many bytes with sha256 and print CPU-s/GB; no network")
	flag.Parse()
	if *hashBytes > 0 {
		if err := hashCost(*hashBytes); err != nil {
			fmt.Fprintln(os.Stderr, "quicraw:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch {
	case *listen != "" && *connect == "":
		err = serve(ctx, *listen)
	case *connect != "" && *listen == "":
		err = fetch(ctx, *connect, *size, *runs)
	default:
		err = errors.New("give one of -listen ADDR or -connect ADDR")
	}
	if err != nil && ctx.Err() == nil {
		fmt.Fprintln(os.Stderr, "quicraw:", err)
		os.Exit(1)
	}
}

// quicConfig is the transfer package's configuration of its connections
// (transfer.New) with the default KeepAlive.
func quicConfig() *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:  5 * time.Second,
		MaxIdleTimeout:        35 * time.Second,
		KeepAlivePeriod:       10 * time.Second,
		MaxIncomingStreams:    33,
		MaxIncomingUniStreams: -1,
	}
}

// certificate is a self-signed ed25519 certificate, as node identities use.
func certificate() (tls.Certificate, error) {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func transport(addr string) (*quic.Transport, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	udp, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, err
	}
	return &quic.Transport{Conn: udp}, nil
}

func serve(ctx context.Context, addr string) error {
	cert, err := certificate()
	if err != nil {
		return err
	}
	tr, err := transport(addr)
	if err != nil {
		return err
	}
	defer tr.Close()
	ln, err := tr.Listen(&tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{transfer.ALPN},
		ClientAuth:   tls.RequireAnyClientCert,
	}, quicConfig())
	if err != nil {
		return err
	}
	defer ln.Close()
	buf := make([]byte, bufSize)
	rand.Read(buf)
	for {
		conn, err := ln.Accept(ctx)
		if err != nil {
			return err
		}
		go func() {
			for {
				st, err := conn.AcceptStream(ctx)
				if err != nil {
					return
				}
				go send(st, buf)
			}
		}()
	}
}

// send reads the 8-byte size a client asks for and sends that many bytes.
func send(st *quic.Stream, buf []byte) {
	var req [8]byte
	if _, err := io.ReadFull(st, req[:]); err != nil {
		st.CancelWrite(1)
		return
	}
	for left := int64(binary.BigEndian.Uint64(req[:])); left > 0; {
		n := min(left, int64(len(buf)))
		if _, err := st.Write(buf[:n]); err != nil {
			return
		}
		left -= n
	}
	st.Close()
}

func fetch(ctx context.Context, addr string, size int64, runs int) error {
	cert, err := certificate()
	if err != nil {
		return err
	}
	tr, err := transport("0.0.0.0:0")
	if err != nil {
		return err
	}
	defer tr.Close()
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return err
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := tr.Dial(dctx, ua, &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{cert},
		NextProtos:         []string{transfer.ALPN},
		ServerName:         "lancache",
		InsecureSkipVerify: true, // the benchmark authenticates nobody
	}, quicConfig())
	cancel()
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.CloseWithError(0, "")
	buf := make([]byte, bufSize)
	for range runs {
		start := time.Now()
		st, err := conn.OpenStreamSync(ctx)
		if err != nil {
			return err
		}
		var req [8]byte
		binary.BigEndian.PutUint64(req[:], uint64(size))
		if _, err := st.Write(req[:]); err != nil {
			return err
		}
		st.Close()
		n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{st}, buf)
		if err != nil {
			return err
		}
		if n != size {
			return fmt.Errorf("got %d bytes, asked for %d", n, size)
		}
		fmt.Printf("%.6f\n", time.Since(start).Seconds())
	}
	return nil
}

// hashCost hashes n bytes with sha256 and prints the CPU seconds per GB
// (1e9 bytes) it took, from the process's own rusage.
func hashCost(n int64) error {
	buf := make([]byte, bufSize)
	rand.Read(buf)
	before, err := cpuSeconds()
	if err != nil {
		return err
	}
	h := sha256.New()
	for left := n; left > 0; left -= int64(len(buf)) {
		h.Write(buf[:min(left, int64(len(buf)))])
	}
	h.Sum(nil)
	after, err := cpuSeconds()
	if err != nil {
		return err
	}
	fmt.Printf("%.4f\n", (after-before)/(float64(n)/1e9))
	return nil
}

// cpuSeconds is the user + system CPU time of this process so far.
func cpuSeconds() (float64, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime), nil
}
