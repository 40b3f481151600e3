package syncbuf

import (
	"strings"
	"sync"
	"testing"
)

// Concurrent writers and readers see a consistent buffer (run with -race).
func TestConcurrentUse(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 100 {
				b.Write([]byte("ab"))
				_ = b.Len()
				_ = b.String()
			}
		})
	}
	wg.Wait()
	if got := b.String(); got != strings.Repeat("ab", 400) || b.Len() != 800 || len(b.Bytes()) != 800 {
		t.Fatalf("buffer holds %d bytes", b.Len())
	}
}
