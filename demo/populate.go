package demo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"math/rand/v2"

	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/cache/narcache"
)

// Path is one synthetic store path.
type Path struct {
	Hash cache.Hash
	Info *cache.NarInfo
}

// SyntheticNAR returns a NAR holding a directory with a few files of about
// size bytes in all, derived from seed, and a narinfo for it signed by key.
func SyntheticNAR(key signature.SecretKey, name string, seed uint64, size int) ([]byte, *cache.NarInfo, error) {
	r := rand.New(rand.NewPCG(seed, 0x1a2c))
	var h cache.Hash
	for i := range h {
		h[i] = byte(r.Uint32())
	}
	var buf bytes.Buffer
	w, err := nar.NewWriter(&buf)
	if err != nil {
		return nil, nil, err
	}
	if err := w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeDirectory}); err != nil {
		return nil, nil, err
	}
	files := []struct {
		name string
		size int
		exec bool
	}{{"bin", 0, false}, {"bin/" + name, size * 3 / 4, true}, {"share", 0, false}, {"share/README", size - size*3/4, false}}
	for _, f := range files {
		if f.size == 0 && f.name != "share/README" {
			if err := w.WriteHeader(&nar.Header{Path: "/" + f.name, Type: nar.TypeDirectory}); err != nil {
				return nil, nil, err
			}
			continue
		}
		data := make([]byte, f.size)
		var seed [32]byte
		for i := range seed {
			seed[i] = byte(r.Uint32())
		}
		rand.NewChaCha8(seed).Read(data)
		if err := w.WriteHeader(&nar.Header{Path: "/" + f.name, Type: nar.TypeRegular, Size: int64(len(data)), Executable: f.exec}); err != nil {
			return nil, nil, err
		}
		if _, err := w.Write(data); err != nil {
			return nil, nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, nil, err
	}
	info := &cache.NarInfo{
		StorePath:   cache.StoreDir + "/" + h.String() + "-" + name,
		Compression: "none",
		NarHash:     sha256.Sum256(buf.Bytes()),
		NarSize:     uint64(buf.Len()),
	}
	sig, err := key.Sign(nil, info.Fingerprint())
	if err != nil {
		return nil, nil, fmt.Errorf("sign %s: %w", info.StorePath, err)
	}
	info.Sigs = []string{sig.String()}
	return buf.Bytes(), info, nil
}

// Populate writes count synthetic signed paths of about size bytes each into
// the NAR cache at dir (created if missing), named prefix-<i>, and returns
// them. Paths already there are kept.
func Populate(ctx context.Context, dir string, key signature.SecretKey, prefix string, seed uint64, count, size int) ([]Path, error) {
	nc, err := narcache.Open(ctx, narcache.Config{Dir: dir, MaxSize: int64(count*size)*2 + 64<<20, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	var out []Path
	for i := range count {
		data, info, err := SyntheticNAR(key, fmt.Sprintf("%s-%d", prefix, i), seed+uint64(i), size)
		if err != nil {
			return nil, err
		}
		h, _ := info.Hash()
		out = append(out, Path{Hash: h, Info: info})
		if nc.Has(h) {
			continue
		}
		w, err := nc.Begin(info)
		if err != nil {
			return nil, fmt.Errorf("add %s to %s: %w", info.StorePath, dir, err)
		}
		if _, err := w.Write(data); err != nil {
			w.Abort(err)
			return nil, fmt.Errorf("add %s to %s: %w", info.StorePath, dir, err)
		}
		if err := w.Commit(); err != nil {
			return nil, fmt.Errorf("add %s to %s: %w", info.StorePath, dir, err)
		}
	}
	return out, nil
}
