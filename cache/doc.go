// Package cache owns what this node has and how Nix sees it: the read-only
// Nix store reader (DB + NAR dump), the share policy, narinfo parsing and
// signing checks, and the Nix-facing HTTP binary-cache API.
//
// It does not talk to peers or upstreams; it asks a Resolver for what it
// does not hold itself.
package cache
