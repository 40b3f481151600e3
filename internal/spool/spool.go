// Package spool holds one download while it grows: a temporary file that
// one writer appends to and any number of readers copy from, at any
// offset, following it as it grows until the writer finishes or gives up.
//
// It is the buffer of a NAR download shared by the LAN (issue 11): the node
// fetching from upstream appends, its own Nix and the peers following the
// download read. The file is unlinked as soon as it is created, so a crash
// leaves nothing behind, and nothing in it is ever taken for a complete,
// verified file: that is the caller's business, through Finish.
package spool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// ErrAborted wraps the error a download was given up with (Finish with a
// non-nil error), as readers see it.
var ErrAborted = errors.New("download given up")

// ErrClosed is returned by Write after Finish or Close, and by Copy after
// Close.
var ErrClosed = errors.New("spool closed")

// copyBuf is the size of the reads readers make.
const copyBuf = 256 << 10

// File is one growing download. Write and Finish are for its one writer;
// Len, Copy and Wait are safe for concurrent use with them and each other.
type File struct {
	f *os.File

	mu     sync.Mutex
	n      int64 // bytes written
	done   bool  // Finish ran
	err    error // Finish's error
	closed bool
	refs   int           // Copy calls running
	wake   chan struct{} // closed at the next progress
}

// Create creates an empty spool file in dir (the system's temporary
// directory when dir is empty).
func Create(dir string) (*File, error) {
	f, err := os.CreateTemp(dir, ".spool-*")
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("spool: unlink %s: %w", f.Name(), err)
	}
	return &File{f: f, wake: make(chan struct{})}, nil
}

// Write appends p. It fails after Finish or Close.
func (s *File) Write(p []byte) (int, error) {
	s.mu.Lock()
	if s.done || s.closed {
		s.mu.Unlock()
		return 0, ErrClosed
	}
	off := s.n
	s.mu.Unlock()
	// Only the writer moves s.n, so the bytes from off are its own; readers
	// never read past s.n.
	k, err := s.f.WriteAt(p, off)
	s.mu.Lock()
	s.n += int64(k)
	s.wakeLocked()
	s.mu.Unlock()
	if err != nil {
		return k, fmt.Errorf("spool: %w", err)
	}
	return k, nil
}

func (s *File) wakeLocked() {
	close(s.wake)
	s.wake = make(chan struct{})
}

// Finish ends the download: err nil means it is complete (readers copy to
// its end and return nil); otherwise readers return at once, with an error
// wrapping ErrAborted and err: the rest of a download given up is not
// worth reading.
func (s *File) Finish(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return
	}
	s.done, s.err = true, err
	s.wakeLocked()
}

// Len returns the bytes written so far, whether the download is finished,
// and with what error.
func (s *File) Len() (n int64, done bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n, s.done, s.err
}

// Wait blocks until at least n bytes are written or the download is
// finished, or ctx ends, and returns what Len returns then.
func (s *File) Wait(ctx context.Context, n int64) (int64, bool, error) {
	for {
		s.mu.Lock()
		have, done, ferr, wake := s.n, s.done, s.err, s.wake
		s.mu.Unlock()
		if have >= n || done {
			return have, done, ferr
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return have, done, ctx.Err()
		}
	}
}

// Copy writes the file's bytes from offset to w, following the file as it
// grows, until the download is finished and every byte is copied. It
// returns the bytes copied and nil for a complete download; an error
// wrapping ErrAborted when the download was given up; ctx's error when
// ctx ends first; w's error as it is.
func (s *File) Copy(ctx context.Context, w io.Writer, offset int64) (int64, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return 0, ErrClosed
	}
	s.refs++
	s.mu.Unlock()
	defer s.release()

	buf := make([]byte, copyBuf)
	pos := offset
	for {
		have, done, ferr := s.Wait(ctx, pos+1)
		switch {
		case ctx.Err() != nil:
			return pos - offset, ctx.Err()
		case done && ferr != nil:
			return pos - offset, fmt.Errorf("spool: %w: %w", ErrAborted, ferr)
		case done && pos > have:
			return 0, fmt.Errorf("spool: offset %d beyond the %d-byte file", offset, have)
		case done && pos == have:
			return pos - offset, nil
		}
		for pos < have {
			k, err := s.f.ReadAt(buf[:min(int64(len(buf)), have-pos)], pos)
			if k > 0 {
				if _, werr := w.Write(buf[:k]); werr != nil {
					return pos - offset, werr
				}
				pos += int64(k)
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return pos - offset, fmt.Errorf("spool: read: %w", err)
			}
		}
	}
}

func (s *File) release() {
	s.mu.Lock()
	s.refs--
	last := s.closed && s.refs == 0
	s.mu.Unlock()
	if last {
		s.f.Close()
	}
}

// Close releases the file once the Copy calls running have returned; new
// ones fail. A download not finished is given up.
func (s *File) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	if !s.done {
		s.done, s.err = true, ErrClosed
		s.wakeLocked()
	}
	last := s.refs == 0
	s.mu.Unlock()
	if last {
		return s.f.Close()
	}
	return nil
}
