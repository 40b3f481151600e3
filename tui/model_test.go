package tui

import (
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/colorprofile"
	"github.com/charmbracelet/x/ansi"
	"github.com/charmbracelet/x/exp/teatest/v2"
)

// errRefused is what the client reports when nothing listens.
var errRefused = fmt.Errorf("get events from 127.0.0.1:37515: %w", &net.OpError{
	Op: "dial", Net: "tcp",
	Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 37515},
	Err:  os.NewSyscallError("connect", syscall.ECONNREFUSED),
})

// plain is a view as the golden files hold it: no escape sequences, no
// trailing blanks.
func plain(s string) string {
	lines := strings.Split(ansi.Strip(s), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " ")
	}
	return strings.Join(lines, "\n") + "\n"
}

func newTestModel(noColor bool) Model {
	return NewModel(nil, Options{Addr: "127.0.0.1:37515", NoColor: noColor, Now: fixedNow})
}

// TestGolden runs the model in a headless program, sends it the messages
// of each case, quits with q and compares the last screen with
// testdata/TestGolden/<case>.golden (regenerate with -update).
func TestGolden(t *testing.T) {
	cases := []struct {
		name string
		w, h int
		msgs []tea.Msg
	}{
		{"no_peers", 80, 24, []tea.Msg{StatusMsg{Status: emptyStatus(), Streaming: true}}},
		{"busy", 80, 24, []tea.Msg{StatusMsg{Status: busyStatus(), Streaming: true}}},
		{"busy_sorted_focused", 80, 24, []tea.Msg{
			StatusMsg{Status: busyStatus()},
			key("s"), key("down"), key("tab"), key("down"), // sort by RTT, select 2nd peer, then 2nd transfer
		}},
		{"unreachable", 80, 24, []tea.Msg{StatusMsg{Err: errRefused, Attempt: 3, RetryIn: 4 * time.Second}}},
		{"connecting", 80, 24, nil},
		{"lost_after_data", 80, 24, []tea.Msg{
			StatusMsg{Status: busyStatus(), Streaming: true},
			StatusMsg{Err: errRefused, Attempt: 1, RetryIn: time.Second},
		}},
		{"narrow_60x24", 80, 24, []tea.Msg{
			StatusMsg{Status: busyStatus(), Streaming: true},
			tea.WindowSizeMsg{Width: 60, Height: 24},
		}},
		{"small_50x14", 50, 14, []tea.Msg{StatusMsg{Status: busyStatus(), Streaming: true}}},
		{"wide_120x30", 120, 30, []tea.Msg{StatusMsg{Status: busyStatus(), Streaming: true}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tm := teatest.NewTestModel(t, newTestModel(true),
				teatest.WithInitialTermSize(c.w, c.h),
				teatest.WithProgramOptions(tea.WithColorProfile(colorprofile.Ascii)))
			for _, msg := range c.msgs {
				tm.Send(msg)
			}
			tm.Type("q")
			final := tm.FinalModel(t, teatest.WithFinalTimeout(5*time.Second)).(Model)
			view := final.View().Content
			checkFits(t, view, final.width, final.height)
			checkNoColour(t, view)
			teatest.RequireEqualOutput(t, []byte(plain(view)))
		})
	}
}

// TestFeed checks that the model follows its feed channel.
func TestFeed(t *testing.T) {
	feed := make(chan StatusMsg)
	m := NewModel(feed, Options{Addr: "127.0.0.1:37515", NoColor: true, Now: fixedNow})
	tm := teatest.NewTestModel(t, m, teatest.WithProgramOptions(tea.WithColorProfile(colorprofile.Ascii)))
	feed <- StatusMsg{Err: errRefused, Attempt: 1, RetryIn: time.Second}
	teatest.WaitFor(t, tm.Output(), func(b []byte) bool {
		return strings.Contains(string(b), "Cannot reach")
	}, teatest.WithDuration(5*time.Second))
	feed <- StatusMsg{Status: busyStatus(), Streaming: true}
	teatest.WaitFor(t, tm.Output(), func(b []byte) bool {
		return strings.Contains(string(b), "firefox")
	}, teatest.WithDuration(5*time.Second))
	close(feed)
	tm.Type("q")
	final := tm.FinalModel(t, teatest.WithFinalTimeout(5*time.Second)).(Model)
	if final.status == nil || final.err != nil {
		t.Fatalf("final model: status %v, err %v; want the snapshot and no error", final.status != nil, final.err)
	}
}

func key(k string) tea.KeyPressMsg {
	switch k {
	case "tab":
		return tea.KeyPressMsg{Code: tea.KeyTab}
	case "shift+tab":
		return tea.KeyPressMsg{Code: tea.KeyTab, Mod: tea.ModShift}
	case "down":
		return tea.KeyPressMsg{Code: tea.KeyDown}
	case "up":
		return tea.KeyPressMsg{Code: tea.KeyUp}
	case "left":
		return tea.KeyPressMsg{Code: tea.KeyLeft}
	case "right":
		return tea.KeyPressMsg{Code: tea.KeyRight}
	case "ctrl+c":
		return tea.KeyPressMsg{Code: 'c', Mod: tea.ModCtrl}
	}
	r := []rune(k)[0]
	return tea.KeyPressMsg{Code: r, Text: k}
}

func send(m Model, msgs ...tea.Msg) (Model, tea.Cmd) {
	var cmd tea.Cmd
	for _, msg := range msgs {
		var tm tea.Model
		tm, cmd = m.Update(msg)
		m = tm.(Model)
	}
	return m, cmd
}

func TestKeys(t *testing.T) {
	m, _ := send(newTestModel(true), StatusMsg{Status: busyStatus()})
	names := func(m Model) string {
		var n []string
		for _, p := range m.peers {
			n = append(n, p.Name)
		}
		return strings.Join(n, ",")
	}
	if got, want := names(m), "bravo,charlie,delta-nas-in-the-basement"; got != want {
		t.Errorf("sorted by name: %s, want %s", got, want)
	}
	m, _ = send(m, key("down")) // select charlie
	m, _ = send(m, key("s"))
	if got, want := names(m), "bravo,charlie,delta-nas-in-the-basement"; m.sortBy != sortRTT || got != want {
		t.Errorf("sorted by %s: %s, want RTT: %s", m.sortBy, got, want)
	}
	m, _ = send(m, key("s"))
	if got, want := names(m), "charlie,bravo,delta-nas-in-the-basement"; m.sortBy != sortTraffic || got != want {
		t.Errorf("sorted by %s: %s, want traffic: %s", m.sortBy, got, want)
	}
	if got := m.peers[m.cursor[paneNeighbours]].Name; got != "charlie" {
		t.Errorf("after sorting the selection moved to %s, want it to stay on charlie", got)
	}
	m, _ = send(m, key("s"))
	if m.sortBy != sortName {
		t.Errorf("s three times: sort %s, want name", m.sortBy)
	}

	for _, c := range []struct {
		key  string
		want pane
	}{{"tab", paneTransfers}, {"tab", paneRecent}, {"tab", paneNeighbours}, {"shift+tab", paneRecent}, {"left", paneTransfers}, {"right", paneRecent}} {
		m, _ = send(m, key(c.key))
		if m.focus != c.want {
			t.Errorf("after %s focus is %s, want %s", c.key, m.focus, c.want)
		}
	}
	// Recent pane: three rows; moving stops at the ends.
	m, _ = send(m, key("down"), key("down"), key("down"), key("down"))
	if m.cursor[paneRecent] != 2 {
		t.Errorf("cursor after 4 downs in 3 rows: %d, want 2", m.cursor[paneRecent])
	}
	m, _ = send(m, key("up"), key("up"), key("up"))
	if m.cursor[paneRecent] != 0 {
		t.Errorf("cursor after 3 ups: %d, want 0", m.cursor[paneRecent])
	}

	for _, k := range []string{"q", "ctrl+c"} {
		_, cmd := send(m, key(k))
		if cmd == nil {
			t.Fatalf("%s: no command, want quit", k)
		}
		if _, ok := cmd().(tea.QuitMsg); !ok {
			t.Errorf("%s: command does not quit", k)
		}
	}
}

// TestSelectionFollowsUpdates checks the selected transfer stays on the
// same transfer when a new snapshot reorders the list.
func TestSelectionFollowsUpdates(t *testing.T) {
	st := busyStatus()
	m, _ := send(newTestModel(true), StatusMsg{Status: st}, key("tab"), key("down"))
	if got := m.active[m.cursor[paneTransfers]].Name; got != "glibc-2.40-36" {
		t.Fatalf("selected %s, want glibc", got)
	}
	st2 := busyStatus()
	st2.Transfers[0], st2.Transfers[1] = st2.Transfers[1], st2.Transfers[0]
	m, _ = send(m, StatusMsg{Status: st2})
	if got := m.active[m.cursor[paneTransfers]].Name; got != "glibc-2.40-36" {
		t.Errorf("after reorder selected %s, want glibc", got)
	}
	st3 := busyStatus()
	st3.Transfers = st3.Transfers[2:] // no active transfers left
	m, _ = send(m, StatusMsg{Status: st3})
	if m.cursor[paneTransfers] != 0 {
		t.Errorf("cursor %d with no rows, want 0", m.cursor[paneTransfers])
	}
}

// TestFitsEverySize renders at many sizes, in colour and without, and
// checks that nothing overflows the terminal.
func TestFitsEverySize(t *testing.T) {
	for _, noColor := range []bool{false, true} {
		for _, u := range []StatusMsg{{Status: busyStatus()}, {Status: emptyStatus()}, {Err: errRefused, Attempt: 2, RetryIn: 2 * time.Second}} {
			base, _ := send(newTestModel(noColor), u)
			for w := 20; w <= 140; w += 11 {
				for h := 3; h <= 40; h += 6 {
					m, _ := send(base, tea.WindowSizeMsg{Width: w, Height: h})
					checkFits(t, m.View().Content, w, h)
				}
			}
		}
	}
}

func TestNoColourWhenAsked(t *testing.T) {
	m, _ := send(newTestModel(true), StatusMsg{Status: busyStatus()})
	checkNoColour(t, m.View().Content)
	// The colour version does use colour, and says the same in text.
	c, _ := send(newTestModel(false), StatusMsg{Status: busyStatus()})
	if !hasColour(c.View().Content) {
		t.Error("colour view has no colour")
	}
	if plain(c.View().Content) != plain(m.View().Content) {
		t.Errorf("colour and no-colour views differ in text:\n%s\n---\n%s", plain(c.View().Content), plain(m.View().Content))
	}
}

func checkFits(t *testing.T, view string, w, h int) {
	t.Helper()
	lines := strings.Split(view, "\n")
	if len(lines) > h {
		t.Errorf("%dx%d: %d lines", w, h, len(lines))
	}
	for i, l := range lines {
		if lw := ansi.StringWidth(l); lw > w {
			t.Errorf("%dx%d: line %d is %d wide: %q", w, h, i, lw, ansi.Strip(l))
		}
	}
}

var sgr = regexp.MustCompile("\x1b\\[([0-9;:]*)m")

// hasColour reports whether s sets a foreground or background colour.
func hasColour(s string) bool {
	for _, m := range sgr.FindAllStringSubmatch(s, -1) {
		for _, p := range strings.FieldsFunc(m[1], func(r rune) bool { return r == ';' || r == ':' }) {
			n, _ := strconv.Atoi(p)
			if (n >= 30 && n <= 49) || (n >= 90 && n <= 107) {
				return true
			}
		}
	}
	return false
}

func checkNoColour(t *testing.T, s string) {
	t.Helper()
	if hasColour(s) {
		t.Errorf("view uses colour with NoColor: %q", s)
	}
}

// TestRetryCountdown checks the countdown to the next attempt follows the
// clock and that its tick stops once it is no longer needed.
func TestRetryCountdown(t *testing.T) {
	now := testNow
	m := NewModel(nil, Options{Addr: "127.0.0.1:37515", NoColor: true, Now: func() time.Time { return now }})
	m, cmd := send(m, StatusMsg{Err: errRefused, Attempt: 2, RetryIn: 4 * time.Second})
	if cmd == nil {
		t.Fatal("no tick after a failure")
	}
	if v := plain(m.View().Content); !strings.Contains(v, "Retrying in 4s (attempt 2)") {
		t.Errorf("view:\n%s", v)
	}
	now = now.Add(2500 * time.Millisecond)
	m, cmd = send(m, tickMsg{m.tickGen})
	if cmd == nil {
		t.Error("tick stopped before the retry")
	}
	if v := plain(m.View().Content); !strings.Contains(v, "Retrying in 2s") {
		t.Errorf("view after 2.5s:\n%s", v)
	}
	if _, cmd := send(m, tickMsg{m.tickGen - 1}); cmd != nil {
		t.Error("a stale tick keeps ticking")
	}
	now = now.Add(2 * time.Second)
	m, cmd = send(m, tickMsg{m.tickGen})
	if cmd != nil {
		t.Error("tick continues after the retry time")
	}
	if v := plain(m.View().Content); !strings.Contains(v, "Retrying now") {
		t.Errorf("view after 4.5s:\n%s", v)
	}
}
