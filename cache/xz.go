package cache

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"time"

	"github.com/ulikunitz/xz"
)

// newXZReader decompresses xz with the system's xz(1) when there is one: it
// is about 2.3x faster than the pure-Go decoder (62 vs 27 MB/s measured on
// this project's 2-core machines), and xz is what cache.nixos.org serves
// most. Without xz on PATH the pure-Go decoder is used.
func newXZReader(r io.Reader) (io.ReadCloser, error) {
	if path, err := exec.LookPath("xz"); err == nil {
		// All streams to the end of the input, as Nix's liblzma decoder
		// (LZMA_CONCATENATED) and the pure-Go one read it: trailing data
		// that is not another stream (or stream padding) is an error.
		return startCmdReader(exec.Command(path, "-dc"), r)
	}
	d, err := xz.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("xz: %w", err)
	}
	return io.NopCloser(d), nil
}

// cmdReader reads a filter process's stdout; at EOF the exit status decides
// whether the stream was good.
type cmdReader struct {
	cmd    *exec.Cmd
	out    io.ReadCloser
	stderr bytes.Buffer
	waited bool
	err    error
}

func startCmdReader(cmd *exec.Cmd, in io.Reader) (*cmdReader, error) {
	c := &cmdReader{cmd: cmd}
	cmd.Stdin = in
	cmd.Stderr = &limitedBuffer{buf: &c.stderr, max: 4096}
	cmd.WaitDelay = 5 * time.Second // never hang on a stuck stdin copy
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cmd.Path, err)
	}
	c.out = out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	return c, nil
}

func (c *cmdReader) Read(p []byte) (int, error) {
	n, err := c.out.Read(p)
	if errors.Is(err, io.EOF) {
		if werr := c.wait(); werr != nil {
			return n, werr
		}
	}
	return n, err
}

func (c *cmdReader) wait() error {
	if !c.waited {
		c.waited = true
		if err := c.cmd.Wait(); err != nil {
			c.err = fmt.Errorf("xz: %w: %s", err, bytes.TrimSpace(c.stderr.Bytes()))
		}
	}
	return c.err
}

// Close stops the process if it is still running.
func (c *cmdReader) Close() error {
	if !c.waited {
		c.cmd.Process.Kill()
		c.wait()
	}
	return nil
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	buf *bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.buf.Len(); room > 0 {
		l.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}
