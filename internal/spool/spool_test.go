package spool

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"
)

func data(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{1})
	r.Read(b)
	return b
}

func TestCreateLeavesNothingOnDisk(t *testing.T) {
	dir := t.TempDir()
	s, err := Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("spool dir holds %v: a crash would leave it behind", ents)
	}
}

// Readers that start before, during and after the download, at several
// offsets, all get exactly their part of it.
func TestReadersFollowGrowth(t *testing.T) {
	want := data(3<<20 + 12345)
	s, err := Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var wg sync.WaitGroup
	read := func(off int64) {
		wg.Go(func() {
			var got bytes.Buffer
			n, err := s.Copy(context.Background(), &got, off)
			if err != nil || n != int64(len(want))-off || !bytes.Equal(got.Bytes(), want[off:]) {
				t.Errorf("reader from %d: %d bytes, err %v; want %d", off, n, err, int64(len(want))-off)
			}
		})
	}
	read(0)
	read(1 << 20)
	read(int64(len(want)) - 1)
	for p := want; len(p) > 0; {
		k := min(len(p), 1+rand.IntN(100<<10))
		if _, err := s.Write(p[:k]); err != nil {
			t.Fatal(err)
		}
		p = p[k:]
		if len(p) < len(want)/2 && len(p)+k >= len(want)/2 {
			read(0) // joins halfway
			read(int64(len(want) / 3))
		}
	}
	s.Finish(nil)
	read(0) // after the end
	read(int64(len(want)))
	wg.Wait()
	if n, done, err := s.Len(); n != int64(len(want)) || !done || err != nil {
		t.Errorf("Len = %d, %v, %v", n, done, err)
	}
	if _, err := s.Write([]byte("late")); !errors.Is(err, ErrClosed) {
		t.Errorf("Write after Finish: %v", err)
	}
	if _, err := s.Copy(context.Background(), &bytes.Buffer{}, int64(len(want))+1); err == nil {
		t.Error("Copy from beyond the end succeeded")
	}
}

func TestAbortReachesReaders(t *testing.T) {
	s, err := Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Write(data(1000))
	done := make(chan error, 1)
	go func() {
		_, err := s.Copy(context.Background(), &bytes.Buffer{}, 0)
		done <- err
	}()
	if _, _, err := s.Wait(context.Background(), 1000); err != nil {
		t.Fatal(err)
	}
	bad := errors.New("hash mismatch")
	s.Finish(bad)
	select {
	case err := <-done:
		if !errors.Is(err, ErrAborted) || !errors.Is(err, bad) {
			t.Errorf("reader of an aborted download: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reader not woken by Finish")
	}
}

func TestCopyEndsWithContext(t *testing.T) {
	s, err := Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := s.Copy(ctx, &bytes.Buffer{}, 0)
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Copy waiting on growth ignored its context")
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("peer gone") }

func TestCloseWaitsForReaders(t *testing.T) {
	s, err := Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	want := data(1 << 20)
	s.Write(want)
	// A reader blocked in its writer holds the file open past Close.
	gate := make(chan struct{})
	got := make(chan []byte, 1)
	go func() {
		var buf bytes.Buffer
		s.Copy(context.Background(), gatedWriter{&buf, gate}, 0)
		got <- buf.Bytes()
	}()
	if _, err := s.Copy(context.Background(), failWriter{}, 0); err == nil || errors.Is(err, ErrAborted) {
		t.Errorf("writer error: %v", err)
	}
	s.Finish(nil)
	s.Close()
	if _, err := s.Copy(context.Background(), &bytes.Buffer{}, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("Copy after Close: %v", err)
	}
	close(gate)
	if b := <-got; !bytes.Equal(b, want) {
		t.Errorf("reader running at Close got %d bytes of %d", len(b), len(want))
	}
}

type gatedWriter struct {
	w    *bytes.Buffer
	gate chan struct{}
}

func (g gatedWriter) Write(p []byte) (int, error) {
	<-g.gate
	return g.w.Write(p)
}

func TestCloseGivesUpUnfinished(t *testing.T) {
	s, err := Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("x"))
	inside := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := s.Copy(context.Background(), signalWriter{inside}, 0)
		done <- err
	}()
	<-inside // the reader has the first byte and waits for more
	s.Close()
	select {
	case err := <-done:
		if !errors.Is(err, ErrAborted) {
			t.Errorf("reader of a closed unfinished download: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not wake the reader")
	}
}

// signalWriter closes its channel at the first write.
type signalWriter struct{ c chan struct{} }

func (w signalWriter) Write(p []byte) (int, error) {
	close(w.c)
	return len(p), nil
}
