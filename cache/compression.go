package cache

// NormCompression is the canonical name of a narinfo Compression value: a
// missing one (which Nix reads as bzip2 in a narinfo it parses, but which
// lancache's own sources use for "none") and "none" are both "none".
func NormCompression(c string) string {
	if c == "" {
		return "none"
	}
	return c
}
