// Command lancache-dist builds lancache's distribution artefacts into one
// output directory (dist/ at the repository root by default):
//
//	lancache_<version>_<arch>.deb       for amd64, arm64 and armhf
//	lancache.1.gz                       man page, rendered from the binary's help
//	oci/                                OCI image layout: index of linux/amd64, linux/arm64, linux/arm/v7
//	lancache-image-<arch>.tar           the same images, `docker load`-able
//	bin/lancache-linux-<arch>           the static binaries
//
// Usage (from packaging/, or via packaging/build.sh):
//
//	go run ./cmd/lancache-dist [-repo ..] [-out ../dist] [-version V] [-deb] [-oci]
//
// Without -deb or -oci both are built. The version defaults to the one
// compiled into the source (`lancache version`); SOURCE_DATE_EPOCH fixes
// file and image times (default: the Unix epoch) so builds are reproducible.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"

	"github.com/lancache/lancache/packaging/internal/dist"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "lancache-dist:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("lancache-dist", flag.ContinueOnError)
	o := dist.Options{Log: os.Stderr}
	fs.StringVar(&o.Repo, "repo", "..", "`DIR` of the lancache Go module")
	fs.StringVar(&o.Out, "out", "../dist", "output `DIR`")
	fs.StringVar(&o.Version, "version", "", "version to link into the binaries (default: the source's lancache.Version)")
	fs.BoolVar(&o.Deb, "deb", false, "build the Debian packages")
	fs.BoolVar(&o.OCI, "oci", false, "build the OCI image")
	fs.StringVar(&o.CABundle, "ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "PEM CA bundle to put in the image (skipped when missing)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if !o.Deb && !o.OCI {
		o.Deb, o.OCI = true, true
	}
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		t, err := dist.ParseEpoch(s)
		if err != nil {
			return err
		}
		o.MTime = t
	}
	_, err := dist.Build(ctx, o)
	return err
}
