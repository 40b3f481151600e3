package cache

import (
	"context"
	"errors"
	"io"
)

// Chain is a Source over several sources, asked in order: the first that
// has a path answers for it. WriteNAR goes to the first source whose copy is
// the one info describes (same NarHash and compression).
type Chain []Source

// NarInfo implements Source.
func (c Chain) NarInfo(ctx context.Context, h Hash) (*NarInfo, error) {
	var firstErr error
	for _, s := range c {
		info, err := s.NarInfo(ctx, h)
		if err == nil {
			return info, nil
		}
		if !errors.Is(err, ErrNotFound) && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return nil, firstErr
	}
	return nil, ErrNotFound
}

// WriteNAR implements Source.
func (c Chain) WriteNAR(ctx context.Context, w io.Writer, info *NarInfo, offset, length int64) error {
	h, err := info.Hash()
	if err != nil {
		return err
	}
	for _, s := range c {
		mine, err := s.NarInfo(ctx, h)
		if err != nil || mine.NarHash != info.NarHash || mine.Compression != info.Compression && !(isUncompressed(mine.Compression) && isUncompressed(info.Compression)) {
			continue
		}
		return s.WriteNAR(ctx, w, mine, offset, length)
	}
	return ErrNotFound
}
