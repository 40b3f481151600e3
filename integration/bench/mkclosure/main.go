// Command mkclosure writes a synthetic closure of store paths as a
// `nix-store --export` stream, for `nix-store --store DIR --import` to turn
// into a chroot store the benchmark scripts copy from. The paths are
// deterministic for a given seed (and, with -data real, a given file tree),
// have log-normal sizes and form a DAG of references under one root, the
// shape of a real closure; integration/bench/peerpath.sh uses it for its
// one big path (-n 1), its Firefox-shaped closure (-n 373) and its
// compressible cases (-data real).
//
//	mkclosure -o closure.export -name closure -n 373 -size 1610612736 -seed 1
//	mkclosure -o big.export -name big -n 1 -size 536870912 -data real
//
// It prints the root's store path on stdout. Path i (0 is the root) refers
// to up to 4 paths of higher index, and the root to every path nobody else
// refers to, so the root's closure is all n paths; the stream holds them
// dependencies first, as --import needs. Each path is a directory of files
// (data-NNN: ChaCha8 bytes keyed by seed, path and file, at most 4 MiB each, at most 64 files;
// with -data real, consecutive files of a sorted walk of -real-dirs, cut to
// fit) plus a file "refs" listing the store paths it refers to.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

const (
	storeDir = "/nix/store"
	// exportMagic follows each NAR in a `nix-store --export` stream.
	exportMagic = 0x4558494e
	// maxRandomFile and maxFiles split a random path into files.
	maxRandomFile = 4 << 20
	maxFiles      = 64
	// maxRealFile skips larger files of the real tree (each is read whole).
	maxRealFile = 32 << 20
	// minPathSize is the least content of a path.
	minPathSize = 512
	// maxRefs is the most references a non-root path gets.
	maxRefs = 4
)

type options struct {
	out, name, data string
	n               int
	size            int64
	seed            uint64
	sigma           float64
	realDirs        []string
}

func main() {
	var o options
	var dirs string
	flag.StringVar(&o.out, "o", "", "write the export stream to `FILE` (required)")
	flag.StringVar(&o.name, "name", "closure", "`NAME` of the root path and prefix of the others")
	flag.IntVar(&o.n, "n", 373, "number of store paths")
	flag.Int64Var(&o.size, "size", 1536<<20, "total file bytes of all paths")
	flag.Uint64Var(&o.seed, "seed", 1, "seed of sizes, references, names and random bytes")
	flag.Float64Var(&o.sigma, "sigma", 2, "sigma of the log-normal path sizes")
	flag.StringVar(&o.data, "data", "random", "file contents: random (incompressible) or real (files of -real-dirs)")
	flag.StringVar(&dirs, "real-dirs", "/usr/lib,/usr/share", "comma-separated `DIRS` whose files -data real copies")
	flag.Parse()
	o.realDirs = strings.Split(dirs, ",")
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "mkclosure:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	switch {
	case o.out == "":
		return errors.New("-o FILE is required")
	case o.n < 1:
		return fmt.Errorf("-n %d: want at least 1", o.n)
	case o.size < int64(o.n)*minPathSize:
		return fmt.Errorf("-size %d: want at least %d bytes per path", o.size, minPathSize)
	case o.data != "random" && o.data != "real":
		return fmt.Errorf("-data %q: want random or real", o.data)
	}
	var src contents
	if o.data == "real" {
		files, err := walk(o.realDirs)
		if err != nil {
			return err
		}
		src = &realFiles{files: files}
	} else {
		src = randomFiles{seed: o.seed}
	}
	paths := plan(o)
	f, err := os.Create(o.out)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	e := &encoder{w: bw}
	// Dependencies first: references only point to higher indexes.
	for i := len(paths) - 1; i >= 0; i-- {
		e.u64(1)
		if err := writeNAR(e, paths[i], src); err != nil {
			f.Close()
			return fmt.Errorf("%s: %w", paths[i].path, err)
		}
		e.u64(exportMagic)
		e.str(paths[i].path)
		e.u64(uint64(len(paths[i].refs)))
		for _, r := range paths[i].refs {
			e.str(r)
		}
		e.str("") // deriver
		e.u64(0)  // no legacy signature
	}
	e.u64(0)
	if e.err == nil {
		e.err = bw.Flush()
	}
	if err := errors.Join(e.err, f.Close()); err != nil {
		return fmt.Errorf("write %s: %w", o.out, err)
	}
	fmt.Println(paths[0].path)
	return nil
}

// storePath is one path of the closure.
type storePath struct {
	index int
	path  string
	size  int64
	refs  []string // sorted store paths
}

// plan draws the paths' names, sizes and references from the seed.
func plan(o options) []storePath {
	rng := rand.New(rand.NewPCG(o.seed, 0x6d6b636c6f737572))
	paths := make([]storePath, o.n)
	weights := make([]float64, o.n)
	var sum float64
	for i := range paths {
		name := o.name
		if i > 0 {
			name = fmt.Sprintf("%s-dep-%03d", o.name, i)
		}
		h := sha256.Sum256(fmt.Appendf(nil, "mkclosure\x00%d\x00%s", o.seed, name))
		paths[i] = storePath{index: i, path: storeDir + "/" + nixbase32.EncodeToString(h[:20]) + "-" + name}
		weights[i] = math.Exp(o.sigma * rng.NormFloat64())
		sum += weights[i]
	}
	spare := o.size - int64(o.n)*minPathSize
	var total int64
	for i := range paths {
		paths[i].size = minPathSize + int64(float64(spare)*weights[i]/sum)
		total += paths[i].size
	}
	paths[0].size += o.size - total // rounding
	referred := make([]bool, o.n)
	for i := 1; i < o.n; i++ {
		for range rng.IntN(maxRefs + 1) {
			if i+1 >= o.n {
				break
			}
			j := i + 1 + rng.IntN(o.n-i-1)
			paths[i].refs = append(paths[i].refs, paths[j].path)
			referred[j] = true
		}
	}
	for j := 1; j < o.n; j++ {
		if !referred[j] {
			paths[0].refs = append(paths[0].refs, paths[j].path)
		}
	}
	for i := range paths {
		slices.Sort(paths[i].refs)
		paths[i].refs = slices.Compact(paths[i].refs)
	}
	return paths
}

// file is one regular file of a path's directory.
type file struct {
	name       string
	executable bool
	body       func(w io.Writer) error // writes exactly size bytes
	size       int64
}

// contents chooses the files of a path.
type contents interface {
	pathFiles(p storePath, size int64) ([]file, error)
}

// randomFiles fills paths with seeded ChaCha8 bytes.
type randomFiles struct{ seed uint64 }

func (r randomFiles) pathFiles(p storePath, size int64) ([]file, error) {
	n := min(maxFiles, max(1, int((size+maxRandomFile-1)/maxRandomFile)))
	var out []file
	for k := range n {
		fsize := size / int64(n)
		if k == n-1 {
			fsize = size - fsize*int64(n-1)
		}
		key := sha256.Sum256(fmt.Appendf(nil, "mkclosure data\x00%d\x00%s\x00%d", r.seed, p.path, k))
		out = append(out, file{
			name: fmt.Sprintf("data-%03d", k),
			size: fsize,
			body: func(w io.Writer) error {
				_, err := io.CopyN(w, rand.NewChaCha8(key), fsize)
				return err
			},
		})
	}
	return out, nil
}

// realFiles hands out the files of a sorted walk in turn, from the start
// again when they run out.
type realFiles struct {
	files []string
	next  int
}

func (r *realFiles) pathFiles(_ storePath, size int64) ([]file, error) {
	var out []file
	for skipped := 0; size > 0; {
		if skipped > len(r.files) {
			return nil, errors.New("no file of the real tree is readable")
		}
		name := r.files[r.next%len(r.files)]
		r.next++
		b, err := os.ReadFile(name)
		fi, serr := os.Stat(name)
		if err != nil || serr != nil || len(b) == 0 {
			skipped++
			continue
		}
		skipped = 0
		b = b[:min(int64(len(b)), size)]
		size -= int64(len(b))
		out = append(out, file{
			name:       fmt.Sprintf("%05d-%s", len(out), filepath.Base(name)),
			executable: fi.Mode()&0o111 != 0,
			size:       int64(len(b)),
			body:       func(w io.Writer) error { _, err := w.Write(b); return err },
		})
	}
	return out, nil
}

// walk lists the regular files of dirs, at most maxRealFile each, in
// lexical order; unreadable parts are skipped.
func walk(dirs []string) ([]string, error) {
	var files []string
	for _, d := range dirs {
		_ = filepath.WalkDir(d, func(p string, de fs.DirEntry, err error) error {
			if err != nil {
				if de != nil && de.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			if !de.Type().IsRegular() {
				return nil
			}
			if fi, err := de.Info(); err == nil && fi.Size() > 0 && fi.Size() <= maxRealFile {
				files = append(files, p)
			}
			return nil
		})
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no regular files under %s", strings.Join(dirs, ", "))
	}
	return files, nil
}

// writeNAR writes p as a NAR: a directory of its files and "refs".
func writeNAR(e *encoder, p storePath, src contents) error {
	refs := []byte(strings.Join(p.refs, "\n") + "\n")
	body := max(minPathSize/2, p.size-int64(len(refs)))
	files, err := src.pathFiles(p, body)
	if err != nil {
		return err
	}
	files = append(files, file{name: "refs", size: int64(len(refs)), body: func(w io.Writer) error {
		_, err := w.Write(refs)
		return err
	}})
	slices.SortFunc(files, func(a, b file) int { return strings.Compare(a.name, b.name) })
	e.str("nix-archive-1")
	e.str("(")
	e.str("type")
	e.str("directory")
	for _, f := range files {
		e.str("entry")
		e.str("(")
		e.str("name")
		e.str(f.name)
		e.str("node")
		e.str("(")
		e.str("type")
		e.str("regular")
		if f.executable {
			e.str("executable")
			e.str("")
		}
		e.str("contents")
		e.u64(uint64(f.size))
		if e.err == nil {
			e.err = f.body(e.w)
		}
		e.pad(f.size)
		e.str(")")
		e.str(")")
	}
	e.str(")")
	return e.err
}

// encoder writes Nix's wire format: little-endian uint64s and strings as
// length, bytes, zero padding to 8; the first error sticks.
type encoder struct {
	w   io.Writer
	err error
}

func (e *encoder) u64(v uint64) {
	if e.err == nil {
		e.err = binary.Write(e.w, binary.LittleEndian, v)
	}
}

func (e *encoder) str(s string) {
	e.u64(uint64(len(s)))
	if e.err == nil {
		_, e.err = io.WriteString(e.w, s)
	}
	e.pad(int64(len(s)))
}

func (e *encoder) pad(n int64) {
	if e.err == nil && n%8 != 0 {
		_, e.err = e.w.Write(make([]byte, 8-n%8))
	}
}
