//go:build !unix

package narcache

// lockDir is a no-op where flock is not available.
func lockDir(path string) (func() error, error) { return func() error { return nil }, nil }
