package tui

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/colorprofile"
)

// Options configure Run and NewModel.
type Options struct {
	// Addr is the daemon's HTTP listener, host:port (or a URL).
	Addr string
	// Input is where keys come from; nil means the terminal (stdin, or
	// /dev/tty when stdin is not one).
	Input io.Reader
	// Output is where the screen is drawn; nil means stdout.
	Output io.Writer
	// NoColor draws without colour, as NO_COLOR asks. Run also honours the
	// NO_COLOR environment variable itself.
	NoColor bool
	// HTTPClient talks to the daemon; nil means a default client. It must
	// not have an overall Timeout, which would cut the event stream.
	HTTPClient *http.Client
	// Width and Height are the screen size to assume when Output is not a
	// terminal (a recording, a test); a terminal's own size wins.
	Width, Height int
	// Now is the clock, for tests; nil means time.Now.
	Now func() time.Time
	// Env is the environment the terminal is described by (TERM,
	// NO_COLOR, ...); nil means os.Environ(). Useful over SSH.
	Env []string
}

// noColorEnv reports whether env asks for no colour: NO_COLOR set and not
// empty (https://no-color.org).
func noColorEnv(env []string) bool {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "NO_COLOR="); ok && v != "" {
			return true
		}
	}
	return false
}

// Run shows `lancache top` for the daemon at opts.Addr until the user quits
// or ctx is done. The daemon being unreachable is not an error: the screen
// says so and keeps retrying.
func Run(ctx context.Context, opts Options) error {
	if opts.Addr == "" {
		return errors.New("tui: no daemon address")
	}
	env := opts.Env
	if env == nil {
		env = os.Environ()
	}
	if noColorEnv(env) {
		opts.NoColor = true
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	feed := make(chan StatusMsg)
	client := NewClient(opts.Addr, opts.HTTPClient)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(feed)
		_ = client.Run(ctx, func(u StatusMsg) {
			select {
			case feed <- u:
			case <-ctx.Done():
			}
		})
	}()
	// Stop the client and wait for it before returning, whatever happens.
	defer wg.Wait()
	defer cancel()

	m := NewModel(feed, opts)
	m.altScreen = true
	popts := []tea.ProgramOption{tea.WithContext(ctx), tea.WithEnvironment(env)}
	if opts.Input != nil {
		popts = append(popts, tea.WithInput(opts.Input))
	}
	if opts.Output != nil {
		popts = append(popts, tea.WithOutput(opts.Output))
	}
	if opts.Width > 0 && opts.Height > 0 {
		popts = append(popts, tea.WithWindowSize(opts.Width, opts.Height))
	}
	if opts.NoColor {
		popts = append(popts, tea.WithColorProfile(colorprofile.Ascii))
	}
	_, err := tea.NewProgram(m, popts...).Run()
	if (err != nil && ctx.Err() != nil && errors.Is(err, tea.ErrProgramKilled)) || errors.Is(err, tea.ErrInterrupted) {
		// Cancelled from outside or interrupted (a signal): a normal way
		// to stop.
		return nil
	}
	if err != nil {
		return fmt.Errorf("lancache top: %w", err)
	}
	return nil
}
