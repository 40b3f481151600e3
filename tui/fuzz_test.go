package tui

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

// ownSGR matches the Select Graphic Rendition sequences the model draws with.
var ownSGR = regexp.MustCompile(`\x1b\[[0-9;]*m`)

// FuzzStatusStream feeds arbitrary bytes to what `lancache top` reads from
// a daemon: the server-sent event stream, each event's status JSON, and
// the screen drawn from it. The daemon may be another user's, on the LAN
// (--http), so none of it is trusted: no panic, and no control character
// from the data may reach the terminal (a peer or path name carrying an
// escape sequence must not be able to rewrite the screen or the title).
func FuzzStatusStream(f *testing.F) {
	busy, _ := json.Marshal(busyStatus())
	empty, _ := json.Marshal(emptyStatus())
	f.Add([]byte("data: " + string(busy) + "\n\n"))
	f.Add([]byte("data: " + string(empty) + "\r\n\r\n: comment\nevent: x\ndata: {}\n\n"))
	f.Add([]byte("data: {\"peers\":[{\"name\":\"\\u001b]0;pwned\\u0007\",\"state\":\"connected\"}]}\n\n"))
	f.Add([]byte("data: {\"transfers\":[{\"name\":\"a\\u001b[2Jb\",\"bytes_total\":-5,\"bytes_done\":9e18,\"rate_bytes_per_second\":-1}]}\n\n"))
	f.Add([]byte("data: {\"uptime_seconds\":1e308,\"totals\":{\"narinfo_hits\":18446744073709551615}}\n\n"))
	f.Add([]byte("data: nul\x00l\n\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		m := newTestModel(true)
		readEvents(bytes.NewReader(in), func(data []byte) error {
			st, err := decodeStatus("test", data)
			if err != nil {
				return nil
			}
			m.apply(StatusMsg{Status: st, Streaming: true})
			for _, w := range []int{20, 80, 200} {
				m.width, m.height = w, 40
				// The renderer's own bold and reverse video are the only
				// escape sequences allowed.
				screen := ownSGR.ReplaceAllString(m.render(), "")
				if i := strings.IndexFunc(screen, func(r rune) bool {
					return r != '\n' && (r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0))
				}); i >= 0 {
					t.Fatalf("width %d: control character %q reaches the terminal:\n%q", w, screen[i], screen)
				}
			}
			return nil
		})
	})
}
