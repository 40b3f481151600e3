// Package demo runs `lancache demo`: three nodes in one process on
// loopback, each with an on-disk cache of synthetic signed store paths, that
// fetch from each other continuously through the real HTTP endpoint, QUIC
// transport and verification code. It needs no Nix and no network.
//
// It also provides Populate, which fills a NAR cache with synthetic signed
// paths, for tests and benchmarks.
package demo
