package tui

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"charm.land/bubbles/v2/progress"
	"charm.land/bubbles/v2/table"
	tea "charm.land/bubbletea/v2"
	"charm.land/lipgloss/v2"
	"github.com/charmbracelet/x/ansi"

	"github.com/lancache/lancache/statusapi"
)

// pane is one of the three scrollable parts of the screen.
type pane int

const (
	paneNeighbours pane = iota
	paneTransfers
	paneRecent
	paneCount
)

func (p pane) String() string {
	switch p {
	case paneNeighbours:
		return "Neighbours"
	case paneTransfers:
		return "Transfers"
	default:
		return "Recent"
	}
}

// sortKey orders the neighbours table.
type sortKey int

const (
	sortName    sortKey = iota // by name, then id
	sortRTT                    // fastest first, unknown last
	sortTraffic                // most bytes in+out first
	sortCount
)

func (k sortKey) String() string {
	switch k {
	case sortName:
		return "name"
	case sortRTT:
		return "RTT"
	default:
		return "traffic"
	}
}

// feedMsg is a StatusMsg that came from the model's own feed channel, after
// which the model listens again (a StatusMsg sent to the program directly
// does not start another listener).
type feedMsg struct{ StatusMsg }

// feedClosedMsg tells the model its feed channel is closed.
type feedClosedMsg struct{}

// tickMsg redraws the retry countdown while the daemon is unreachable; gen
// tells stale ticks (from an earlier failure) apart.
type tickMsg struct{ gen int }

func tick(gen int) tea.Cmd {
	return tea.Tick(time.Second, func(time.Time) tea.Msg { return tickMsg{gen} })
}

// Model is the `lancache top` screen as a Bubble Tea model. It renders the
// latest status snapshot it was given; it does no I/O of its own. Feed it
// [StatusMsg] messages, through the channel given to [NewModel] or with
// tea.Program.Send.
type Model struct {
	feed      <-chan StatusMsg
	addr      string
	now       func() time.Time
	st        styles
	altScreen bool

	width, height int

	status    *statusapi.Status // latest snapshot; nil before the first
	streaming bool              // status came from the event stream
	err       error             // last failure; nil after a snapshot
	attempt   int               // failures in a row
	retryAt   time.Time         // the feed's next attempt, after err
	tickGen   int               // generation of the countdown tick

	focus  pane
	sortBy sortKey
	peers  []statusapi.PeerStatus     // sorted by sortBy
	active []statusapi.TransferStatus // in the daemon's order
	recent []statusapi.TransferStatus // most recently finished first
	cursor [paneCount]int             // selected row per pane
}

// NewModel returns the `lancache top` model. It takes its status updates
// from feed (nil: only messages sent to the program) and uses opts.Addr,
// opts.NoColor and opts.Now. Run uses it; tests drive it directly.
func NewModel(feed <-chan StatusMsg, opts Options) Model {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	return Model{
		feed:   feed,
		addr:   opts.Addr,
		now:    now,
		st:     newStyles(opts.NoColor),
		width:  80,
		height: 24,
	}
}

// Init starts listening to the feed.
func (m Model) Init() tea.Cmd {
	return m.listen()
}

// listen waits for the next update of the feed.
func (m Model) listen() tea.Cmd {
	if m.feed == nil {
		return nil
	}
	feed := m.feed
	return func() tea.Msg {
		u, ok := <-feed
		if !ok {
			return feedClosedMsg{}
		}
		return feedMsg{u}
	}
}

// Update handles keys, resizes and status updates.
func (m Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
	case feedMsg:
		m, cmd := m.Update(msg.StatusMsg)
		return m, tea.Batch(m.(Model).listen(), cmd)
	case StatusMsg:
		m.apply(msg)
		if msg.Err != nil {
			m.tickGen++
			return m, tick(m.tickGen)
		}
	case tickMsg:
		if msg.gen == m.tickGen && m.err != nil && m.now().Before(m.retryAt) {
			return m, tick(m.tickGen)
		}
	case feedClosedMsg:
	case tea.KeyPressMsg:
		return m.key(msg)
	}
	return m, nil
}

func (m Model) key(msg tea.KeyPressMsg) (tea.Model, tea.Cmd) {
	switch msg.String() {
	case "q", "ctrl+c", "esc":
		return m, tea.Quit
	case "tab", "right", "l":
		m.focus = (m.focus + 1) % paneCount
	case "shift+tab", "left", "h":
		m.focus = (m.focus + paneCount - 1) % paneCount
	case "up", "k":
		m.move(-1)
	case "down", "j":
		m.move(1)
	case "pgup":
		m.move(-10)
	case "pgdown":
		m.move(10)
	case "home", "g":
		m.move(-1 << 30)
	case "end", "G":
		m.move(1 << 30)
	case "s":
		id := m.selectedPeer()
		m.sortBy = (m.sortBy + 1) % sortCount
		m.sortPeers()
		m.selectPeer(id)
	}
	return m, nil
}

// rows is the number of rows of pane p.
func (m Model) rows(p pane) int {
	switch p {
	case paneNeighbours:
		return len(m.peers)
	case paneTransfers:
		return len(m.active)
	default:
		return len(m.recent)
	}
}

// move moves the focused pane's selection by n rows.
func (m *Model) move(n int) {
	c := m.cursor[m.focus] + n
	m.cursor[m.focus] = max(0, min(c, m.rows(m.focus)-1))
}

// apply takes in one update of the feed, keeping the selections on the
// same peer and transfers where they still exist.
func (m *Model) apply(u StatusMsg) {
	if u.Err != nil {
		m.err, m.attempt, m.retryAt = u.Err, u.Attempt, m.now().Add(u.RetryIn)
		return
	}
	if u.Status == nil {
		return
	}
	peer := m.selectedPeer()
	act := m.selectedTransfer(paneTransfers)
	rec := m.selectedTransfer(paneRecent)

	m.status, m.streaming, m.err, m.attempt = u.Status, u.Streaming, nil, 0
	m.peers = slices.Clone(u.Status.Peers)
	m.sortPeers()
	m.active, m.recent = nil, nil
	for _, t := range u.Status.Transfers {
		if t.Active() {
			m.active = append(m.active, t)
		} else {
			m.recent = append(m.recent, t)
		}
	}
	slices.SortStableFunc(m.recent, func(a, b statusapi.TransferStatus) int {
		return finished(b).Compare(finished(a))
	})
	m.selectPeer(peer)
	m.selectTransfer(paneTransfers, act)
	m.selectTransfer(paneRecent, rec)
}

func finished(t statusapi.TransferStatus) time.Time {
	return t.Started.Add(time.Duration(t.ElapsedSecs * float64(time.Second)))
}

func (m *Model) sortPeers() {
	byName := func(a, b statusapi.PeerStatus) int {
		if c := cmp.Compare(strings.ToLower(a.Name), strings.ToLower(b.Name)); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	}
	var f func(a, b statusapi.PeerStatus) int
	switch m.sortBy {
	case sortRTT:
		f = func(a, b statusapi.PeerStatus) int {
			// Unknown RTTs (0) go last.
			ka, kb := a.RTTMillis, b.RTTMillis
			if (ka <= 0) != (kb <= 0) {
				if ka <= 0 {
					return 1
				}
				return -1
			}
			if c := cmp.Compare(ka, kb); c != 0 {
				return c
			}
			return byName(a, b)
		}
	case sortTraffic:
		f = func(a, b statusapi.PeerStatus) int {
			if c := cmp.Compare(b.BytesFromPeer+b.BytesToPeer, a.BytesFromPeer+a.BytesToPeer); c != 0 {
				return c
			}
			return byName(a, b)
		}
	default:
		f = byName
	}
	slices.SortStableFunc(m.peers, f)
}

func (m *Model) selectedPeer() string {
	if c := m.cursor[paneNeighbours]; c < len(m.peers) {
		return m.peers[c].ID
	}
	return ""
}

func (m *Model) selectPeer(id string) {
	m.cursor[paneNeighbours] = max(0, min(m.cursor[paneNeighbours], len(m.peers)-1))
	for i, p := range m.peers {
		if p.ID == id {
			m.cursor[paneNeighbours] = i
		}
	}
}

func (m *Model) list(p pane) []statusapi.TransferStatus {
	if p == paneTransfers {
		return m.active
	}
	return m.recent
}

func (m *Model) selectedTransfer(p pane) string {
	l := m.list(p)
	if c := m.cursor[p]; c < len(l) {
		return l[c].Hash
	}
	return ""
}

func (m *Model) selectTransfer(p pane, hash string) {
	l := m.list(p)
	m.cursor[p] = max(0, min(m.cursor[p], len(l)-1))
	for i, t := range l {
		if t.Hash == hash && hash != "" {
			m.cursor[p] = i
		}
	}
}

// View renders the screen.
func (m Model) View() tea.View {
	v := tea.NewView(m.render())
	v.AltScreen = m.altScreen
	v.WindowTitle = "lancache top"
	return v
}

// render lays out the screen: header, neighbours, transfers, recent
// transfers and the key help, clipped to the terminal.
func (m Model) render() string {
	w, h := max(m.width, 20), max(m.height, 3)
	var lines []string
	if m.status == nil {
		lines = m.renderWaiting(w)
	} else {
		lines = m.renderStatus(w, h)
	}
	if len(lines) > h {
		lines = lines[:h]
	}
	for i, l := range lines {
		if ansi.StringWidth(l) > w {
			lines[i] = ansi.Truncate(l, w, "")
		}
	}
	return strings.Join(lines, "\n")
}

// renderWaiting is the screen before the first snapshot: connecting, or
// why the daemon cannot be reached and what to do about it.
func (m Model) renderWaiting(w int) []string {
	lines := []string{m.st.title.Render("lancache top") + m.st.dim.Render(" · "+m.addr), ""}
	para := func(s string, style lipgloss.Style) {
		for _, l := range wrapWords(s, w-2) {
			lines = append(lines, "  "+style.Render(l))
		}
	}
	plainText := lipgloss.NewStyle()
	if m.err == nil {
		para(fmt.Sprintf("Connecting to the lancache daemon at %s …", m.addr), plainText)
		lines = append(lines, "")
		para("Press q to quit.", plainText)
		return lines
	}
	para(fmt.Sprintf("! Cannot reach the lancache daemon at %s.", m.addr), m.st.bad)
	para(m.err.Error(), plainText)
	lines = append(lines, "")
	para("Is 'lancache serve' running on this machine?", plainText)
	para("If it listens elsewhere, pass its address:", plainText)
	para("lancache top --http HOST:PORT", m.st.value)
	lines = append(lines, "")
	para(fmt.Sprintf("%s (attempt %d). Press q to quit.", m.retrying(), m.attempt), plainText)
	return lines
}

// retrying counts down to the feed's next attempt.
func (m Model) retrying() string {
	left := m.retryAt.Sub(m.now())
	if left <= 0 {
		return "Retrying now"
	}
	return "Retrying in " + formatDuration(left.Round(time.Second))
}

// reason is the gist of a feed error for the one-line banner: for a
// network error, what the network said ("connect: connection refused").
func reason(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err.Error()
	}
	return err.Error()
}

func (m Model) renderStatus(w, h int) []string {
	s := m.status
	lines := m.header(w, h)
	if m.err != nil {
		banner := fmt.Sprintf("! Lost the daemon at %s: %s. %s (attempt %d); showing the last data.",
			m.addr, reason(m.err), m.retrying(), m.attempt)
		for _, l := range wrapWords(banner, w) {
			lines = append(lines, m.st.bad.Render(l))
		}
	}

	// One title line per pane, the table's header row when it has rows, and
	// the key help at the bottom; the panes share what is left.
	fixed := len(lines) + 3 + 1
	if len(m.peers) > 0 {
		fixed++
	}
	want := []int{max(1, len(m.peers)), max(1, len(m.active)), max(1, len(m.recent))}
	order := []int{int(m.focus)}
	for p := range paneCount {
		if p != m.focus {
			order = append(order, int(p))
		}
	}
	got := allocate(want, h-fixed, order)

	lines = append(lines, m.paneTitle(paneNeighbours, w, fmt.Sprintf("(%d)%s · sort: %s", len(s.Peers), m.shown(paneNeighbours, got), m.sortBy)))
	lines = append(lines, m.neighbours(w, got[paneNeighbours])...)
	lines = append(lines, m.paneTitle(paneTransfers, w, fmt.Sprintf("(%d active)%s", len(m.active), m.shown(paneTransfers, got))))
	lines = append(lines, m.transfers(w, got[paneTransfers])...)
	lines = append(lines, m.paneTitle(paneRecent, w, fmt.Sprintf("(%d)%s", len(m.recent), m.shown(paneRecent, got))))
	lines = append(lines, m.finished(w, got[paneRecent])...)
	lines = append(lines, m.help(w))
	return lines
}

// shown says which rows of pane p are on screen when not all fit in the
// got[p] lines it has.
func (m Model) shown(p pane, got []int) string {
	n, h := m.rows(p), got[p]
	if n <= h {
		return ""
	}
	first := window(m.cursor[p], n, h)
	return fmt.Sprintf(" · %d-%d of %d", first+1, first+h, n)
}

// header is the node line and the totals, wrapped to the width. When the
// full header would take more than a quarter of the screen it shrinks to
// the essentials.
func (m Model) header(w, h int) []string {
	s := m.status
	t := s.Totals
	name := s.Name
	if name == "" {
		name = shortID(s.ID)
	}
	item := func(label, value string) string {
		return m.st.label.Render(label+" ") + m.st.value.Render(value)
	}
	up := "up " + formatDuration(time.Duration(s.UptimeSeconds*float64(time.Second)))
	verify := item("verify failures", fmt.Sprint(t.VerificationFailures))
	if t.VerificationFailures > 0 {
		verify = m.st.bad.Render(fmt.Sprintf("! verify failures %d", t.VerificationFailures))
	}
	hits := formatHitRatio(t.NarInfoHits, t.NarInfoMisses)
	saved := formatBytes(bytesSaved(t.BytesServedToNix, t.BytesFromUpstream))

	node := []string{m.st.title.Render(name), "v" + s.Version, up, fmt.Sprintf("share %s %d/%d", s.Share, s.SharedPaths, s.StorePaths)}
	if s.Cache != nil {
		node = append(node, fmt.Sprintf("cache %s/%s", formatSigned(s.Cache.UsedBytes), formatSigned(s.Cache.MaxBytes)))
	}
	totals := []string{
		item("LAN hits", fmt.Sprintf("%s (%d/%d)", hits, t.NarInfoHits, t.NarInfoHits+t.NarInfoMisses)),
		item("saved from upstream", saved),
		verify,
		item("to Nix", formatBytes(t.BytesServedToNix)),
		item("from peers", formatBytes(t.BytesFromPeers)),
		item("from upstream", formatBytes(t.BytesFromUpstream)),
		item("to peers", formatBytes(t.BytesServedToPeers)),
	}
	lines := append(wrapItems(node, " · ", w), wrapItems(totals, " · ", w)...)
	if len(lines) <= max(2, h/4) {
		return lines
	}
	if t.VerificationFailures > 0 {
		verify = m.st.bad.Render(fmt.Sprintf("! verify %d", t.VerificationFailures))
	} else {
		verify = item("verify", "0")
	}
	return wrapItems([]string{m.st.title.Render(name), up, item("hits", hits), item("saved", saved), verify}, " · ", w)
}

// paneTitle is a pane's title line; the focused pane is marked with "▶"
// and upper case, not by colour alone.
func (m Model) paneTitle(p pane, w int, extra string) string {
	title := "  " + p.String()
	style := m.st.paneTitle
	if p == m.focus {
		title = "▶ " + strings.ToUpper(p.String())
		style = m.st.focusTitle
	}
	text := title + " " + extra + " "
	rule := strings.Repeat("─", max(0, w-ansi.StringWidth(text)))
	return style.Render(text) + m.st.dim.Render(rule)
}

// window is the first row to show of a list of n rows in h lines so that
// the cursor is visible.
func window(cursor, n, h int) int {
	return max(0, min(cursor-h+1, n-h))
}

// marker is the selection column: "›" on the selected row of the focused
// pane.
func (m Model) marker(p pane, row int) string {
	if p == m.focus && row == m.cursor[p] {
		return "›"
	}
	return " "
}

var neighbourCols = []column{
	{width: 1, prio: 100},
	{title: "NAME", width: 8, max: 24, flex: true, prio: 90},
	{title: "ADDRESS", width: 15, max: 40, flex: true, prio: 10},
	{title: "RTT", width: 6, right: true, prio: 60},
	{title: "PATHS", width: 5, right: true, prio: 30},
	{title: "IN", width: 8, right: true, prio: 50},
	{title: "OUT", width: 8, right: true, prio: 40},
	{title: "STATE", width: 13, prio: 80},
}

// neighbours renders the neighbours table in h rows (plus its header).
func (m Model) neighbours(w, h int) []string {
	if len(m.peers) == 0 {
		return []string{m.st.dim.Render("  no neighbours yet: they appear when found by mDNS or given with --peer")}
	}
	widths := fitColumns(neighbourCols, w)
	cols := make([]table.Column, 0, len(neighbourCols))
	keep := make([]int, 0, len(neighbourCols))
	for i, c := range neighbourCols {
		if widths[i] == 0 {
			continue
		}
		keep = append(keep, i)
		cols = append(cols, table.Column{Title: cell(c.title, widths[i], c.right), Width: widths[i]})
	}
	first := window(m.cursor[paneNeighbours], len(m.peers), h)
	now := m.now()
	rows := make([]table.Row, 0, h)
	for i := first; i < min(len(m.peers), first+h); i++ {
		p := m.peers[i]
		name := p.Name
		if name == "" {
			name = shortID(p.ID)
		}
		state := string(p.State)
		if p.BlocklistedUntil != nil && p.BlocklistedUntil.After(now) {
			state = "BLOCKED " + formatDuration(p.BlocklistedUntil.Sub(now))
		}
		all := []string{
			m.marker(paneNeighbours, i), name, p.Address, formatRTT(p.RTTMillis),
			formatCount(p.PathsAdvertised), formatBytes(p.BytesFromPeer), formatBytes(p.BytesToPeer), state,
		}
		row := make(table.Row, 0, len(keep))
		for _, k := range keep {
			row = append(row, cell(all[k], widths[k], neighbourCols[k].right))
		}
		rows = append(rows, row)
	}
	ts := table.Styles{
		Header:   m.st.tableHeader,
		Cell:     lipgloss.NewStyle().PaddingRight(1),
		Selected: lipgloss.NewStyle(),
	}
	if m.focus == paneNeighbours {
		ts.Selected = m.st.selected
	}
	t := table.New(
		table.WithColumns(cols),
		table.WithRows(rows),
		table.WithStyles(ts),
		table.WithWidth(w),
		table.WithHeight(len(rows)+1),
	)
	t.SetCursor(m.cursor[paneNeighbours] - first)
	return strings.Split(t.View(), "\n")
}

var transferCols = []column{
	{width: 1, prio: 100},
	{title: "NAME", width: 10, max: 40, flex: true, prio: 90},
	{title: "FROM", width: 8, max: 16, flex: true, prio: 80},
	{title: "PROGRESS", width: 8, flex: true, prio: 70},
	{title: "%", width: 4, right: true, prio: 75},
	{title: "SIZE", width: 17, right: true, prio: 10, minTotal: 100},
	{title: "RATE", width: 10, right: true, prio: 60},
	{title: "ETA", width: 9, prio: 50},
}

// transfers renders the active transfers in h rows, with progress bars.
func (m Model) transfers(w, h int) []string {
	if len(m.active) == 0 {
		return []string{m.st.dim.Render("  no active transfers")}
	}
	widths := fitColumns(transferCols, w)
	first := window(m.cursor[paneTransfers], len(m.active), h)
	var lines []string
	for i := first; i < min(len(m.active), first+h); i++ {
		t := m.active[i]
		pct, bar := "?", m.st.dim.Render(strings.Repeat("░", widths[3]))
		size := formatSigned(t.BytesDone) + "/?"
		if t.BytesTotal > 0 {
			frac := max(0, min(1, float64(t.BytesDone)/float64(t.BytesTotal)))
			pct = fmt.Sprintf("%.0f%%", frac*100)
			pb := m.st.bar()
			pb.SetWidth(widths[3])
			bar = pb.ViewAs(frac)
			size = formatSigned(t.BytesDone) + "/" + formatSigned(t.BytesTotal)
		}
		etaText := "eta --"
		if t.BytesTotal > 0 {
			etaText = "eta " + formatETA(t.BytesTotal-t.BytesDone, t.RateBps)
		}
		lines = append(lines, m.row(paneTransfers, i, transferCols, widths, []string{
			m.marker(paneTransfers, i), transferName(t), source(t), bar, pct, size, formatRate(t.RateBps), etaText,
		}))
	}
	return lines
}

var recentCols = []column{
	{width: 1, prio: 100},
	{title: "RESULT", width: 10, prio: 95},
	{title: "NAME", width: 10, max: 40, flex: true, prio: 90},
	{title: "FROM", width: 8, max: 16, flex: true, prio: 80},
	{title: "SIZE", width: 8, right: true, prio: 60},
	{title: "TIME", width: 6, right: true, prio: 40},
	{title: "RATE", width: 10, right: true, prio: 30},
}

// finished renders the recently completed or failed transfers in h rows.
func (m Model) finished(w, h int) []string {
	if len(m.recent) == 0 {
		return []string{m.st.dim.Render("  nothing finished yet")}
	}
	widths := fitColumns(recentCols, w)
	first := window(m.cursor[paneRecent], len(m.recent), h)
	var lines []string
	for i := first; i < min(len(m.recent), first+h); i++ {
		t := m.recent[i]
		result := m.st.good.Render("✓ ok")
		switch t.Result {
		case statusapi.ResultOK:
		case statusapi.ResultHashMismatch:
			result = m.st.bad.Render("✗ BAD HASH")
		case statusapi.ResultCanceled:
			result = m.st.dim.Render("- canceled")
		default:
			result = m.st.bad.Render("✗ " + strings.ToUpper(string(t.Result)))
		}
		elapsed := time.Duration(t.ElapsedSecs * float64(time.Second))
		took := formatDuration(elapsed)
		if elapsed < 10*time.Second {
			took = fmt.Sprintf("%.1fs", elapsed.Seconds())
		}
		rate := "-"
		if t.ElapsedSecs > 0 {
			rate = formatRate(float64(t.BytesDone) / t.ElapsedSecs)
		}
		lines = append(lines, m.row(paneRecent, i, recentCols, widths, []string{
			m.marker(paneRecent, i), result, transferName(t), source(t), formatSigned(t.BytesDone), took, rate,
		}))
	}
	return lines
}

// row lays out one row of a list pane, highlighted when selected in the
// focused pane.
func (m Model) row(p pane, i int, cols []column, widths []int, values []string) string {
	line := joinCells(cols, widths, values)
	if p == m.focus && i == m.cursor[p] {
		return m.st.selected.Render(line)
	}
	return line
}

// help is the key help line, with how the feed arrives and the daemon's
// address on the right when there is room.
func (m Model) help(w int) string {
	keys := strings.Join([]string{"q quit", "tab/←→ pane", "↑↓ select", "s sort: " + m.sortBy.String()}, " · ")
	feed := "polling " + m.addr
	if m.streaming {
		feed = "live " + m.addr
	}
	if gap := w - ansi.StringWidth(keys) - ansi.StringWidth(feed); gap >= 2 {
		return m.st.dim.Render(keys + strings.Repeat(" ", gap) + feed)
	}
	return m.st.dim.Render(ansi.Truncate(keys, w, "…"))
}

// transferName is a transfer's store path name, or its hash without one.
func transferName(t statusapi.TransferStatus) string {
	if t.Name != "" {
		return t.Name
	}
	return t.Hash
}

// source names where a transfer's bytes come from: the peer's name, or
// upstream, cache or store.
func source(t statusapi.TransferStatus) string {
	if t.Source == statusapi.SourcePeer && t.Peer != "" {
		return t.Peer
	}
	return string(t.Source)
}

// shortID abbreviates a node id for display.
func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// styles holds the lipgloss styles of the screen. Without colour every
// style is plain text or a text attribute, and the text says everything.
type styles struct {
	title, label, value, dim, good, bad lipgloss.Style
	paneTitle, focusTitle, tableHeader  lipgloss.Style
	selected                            lipgloss.Style
	noColor                             bool
}

func newStyles(noColor bool) styles {
	s := styles{
		title:       lipgloss.NewStyle().Bold(true),
		label:       lipgloss.NewStyle(),
		value:       lipgloss.NewStyle().Bold(true),
		dim:         lipgloss.NewStyle(),
		good:        lipgloss.NewStyle(),
		bad:         lipgloss.NewStyle().Bold(true),
		paneTitle:   lipgloss.NewStyle(),
		focusTitle:  lipgloss.NewStyle().Bold(true),
		tableHeader: lipgloss.NewStyle().Bold(true).PaddingRight(1),
		selected:    lipgloss.NewStyle().Reverse(true),
		noColor:     noColor,
	}
	if noColor {
		return s
	}
	s.title = s.title.Foreground(lipgloss.Color("212"))
	s.label = s.label.Foreground(lipgloss.Color("245"))
	s.dim = s.dim.Foreground(lipgloss.Color("241"))
	s.good = s.good.Foreground(lipgloss.Color("42"))
	s.bad = s.bad.Foreground(lipgloss.Color("203"))
	s.focusTitle = s.focusTitle.Foreground(lipgloss.Color("212"))
	s.tableHeader = s.tableHeader.Foreground(lipgloss.Color("252"))
	return s
}

// bar is a progress bar in the screen's colours; it is drawn with full and
// light shade blocks, so it reads the same without colour.
func (s styles) bar() progress.Model {
	pb := progress.New(progress.WithoutPercentage(), progress.WithFillCharacters('█', '░'))
	if s.noColor {
		pb.FullColor, pb.EmptyColor = lipgloss.NoColor{}, lipgloss.NoColor{}
	}
	return pb
}
