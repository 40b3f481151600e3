package narcache

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/dustin/go-humanize"
)

// DefaultMaxSize is the size bound used when Config.MaxSize is zero.
const DefaultMaxSize = 10 << 30

// ParseSize parses a cache size such as "200GiB", "50 GB", "1.5TiB" or
// "1048576" (bytes). Binary units (KiB, MiB, GiB, TiB) are powers of 1024,
// decimal ones (KB, MB, GB, TB; also K, M, G, T) powers of 1000.
func ParseSize(s string) (int64, error) {
	n, err := humanize.ParseBytes(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("cache size %q: %w", s, err)
	}
	if n == 0 {
		return 0, fmt.Errorf("cache size %q: %w", s, errors.New("must be more than zero"))
	}
	if n > math.MaxInt64 {
		return 0, fmt.Errorf("cache size %q: %w", s, errors.New("too large"))
	}
	return int64(n), nil
}
