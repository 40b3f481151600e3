package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/lancache/lancache/transfer"
)

func cmdKeygen(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	fleet := fs.String("fleet", "", "write a new fleet key to `FILE` (mode 0600; an existing file is not overwritten)")
	setUsage(fs, "keygen --fleet FILE",
		"Make a fleet key. Copy the file to every machine of the fleet and start\nthem with --fleet-key FILE: nodes without it are refused.")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if *fleet == "" {
		fmt.Fprintln(stderr, "lancache keygen: --fleet FILE is required")
		fs.Usage()
		return errUsage
	}
	if err := transfer.GenerateFleetKey(*fleet); err != nil {
		return err
	}
	_, err := fmt.Fprintf(stdout, "fleet key written to %s; copy it to every node and pass --fleet-key %s\n", *fleet, *fleet)
	return err
}
