//go:build unix

package narcache

import (
	"fmt"
	"os"
	"syscall"
)

// lockDir takes an exclusive lock on dir so that two daemons never manage
// the same cache directory. The lock goes away with the process.
func lockDir(path string) (func() error, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s (is another lancache using this cache directory?): %w", path, err)
	}
	return f.Close, nil
}
