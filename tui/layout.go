package tui

import (
	"strings"

	"github.com/charmbracelet/x/ansi"
)

// column describes one column of a pane for fitColumns.
type column struct {
	title string
	width int  // fixed width, or the least width of a flexible column
	max   int  // flexible columns: the most width worth giving (0: no limit)
	flex  bool // grows to share what the fixed columns leave
	prio  int  // narrow terminals drop the lowest priorities first
	right bool // right-aligned (numbers)
	// minTotal drops the column on terminals narrower than this, so that
	// a nice-to-have column does not squeeze the essential ones.
	minTotal int
}

// fitColumns gives each column a width so that the columns, each followed
// by a one-cell gap, fit in total cells. Columns that do not fit are
// dropped, lowest priority first, and get width 0; flexible columns share
// the space left over.
func fitColumns(cols []column, total int) []int {
	widths := make([]int, len(cols))
	alive := make([]bool, len(cols))
	for i, c := range cols {
		alive[i] = total >= c.minTotal
	}
	used := func() int {
		n := 0
		for i, c := range cols {
			if alive[i] {
				n += c.width + 1
			}
		}
		return n
	}
	for used() > total {
		drop, count := -1, 0
		for i, c := range cols {
			if !alive[i] {
				continue
			}
			count++
			if drop < 0 || c.prio < cols[drop].prio {
				drop = i
			}
		}
		if count <= 1 {
			break
		}
		alive[drop] = false
	}
	for i, c := range cols {
		if alive[i] {
			widths[i] = c.width
		}
	}
	slack := total - used()
	for slack > 0 {
		grew := false
		for i, c := range cols {
			if slack == 0 {
				break
			}
			if alive[i] && c.flex && (c.max == 0 || widths[i] < c.max) {
				widths[i]++
				slack--
				grew = true
			}
		}
		if !grew {
			break
		}
	}
	return widths
}

// cell fits s into exactly w cells: truncated with an ellipsis when too
// long, padded with spaces (on the left when right) when too short.
func cell(s string, w int, right bool) string {
	if w <= 0 {
		return ""
	}
	s = ansi.Truncate(s, w, "…")
	pad := w - ansi.StringWidth(s)
	if pad <= 0 {
		return s
	}
	if right {
		return strings.Repeat(" ", pad) + s
	}
	return s + strings.Repeat(" ", pad)
}

// joinCells lays out one row: each kept column's value fitted to its width,
// separated by single spaces.
func joinCells(cols []column, widths []int, values []string) string {
	var b strings.Builder
	first := true
	for i, c := range cols {
		if widths[i] == 0 {
			continue
		}
		if !first {
			b.WriteByte(' ')
		}
		first = false
		b.WriteString(cell(values[i], widths[i], c.right))
	}
	return b.String()
}

// wrapItems flows items into lines of at most width cells, separated by
// sep, breaking only between items. An item wider than a line is truncated.
func wrapItems(items []string, sep string, width int) []string {
	var lines []string
	var cur strings.Builder
	curW := 0
	sepW := ansi.StringWidth(sep)
	for _, it := range items {
		w := ansi.StringWidth(it)
		if curW > 0 && curW+sepW+w > width {
			lines = append(lines, cur.String())
			cur.Reset()
			curW = 0
		}
		if curW > 0 {
			cur.WriteString(sep)
			curW += sepW
		}
		if w > width {
			it = ansi.Truncate(it, width, "…")
			w = ansi.StringWidth(it)
		}
		cur.WriteString(it)
		curW += w
	}
	if curW > 0 {
		lines = append(lines, cur.String())
	}
	return lines
}

// wrapWords breaks text into lines of at most width cells, between words
// only (a word wider than a line is truncated).
func wrapWords(text string, width int) []string {
	return wrapItems(strings.Fields(text), " ", width)
}

// allocate shares avail rows among panes that want want[i] rows each: every
// pane gets at least one, then rows go round-robin in the order given by
// order, so the focused pane can come first.
func allocate(want []int, avail int, order []int) []int {
	got := make([]int, len(want))
	left := avail
	for i := range want {
		got[i] = 1
		left--
	}
	for left > 0 {
		grew := false
		for _, i := range order {
			if left == 0 {
				break
			}
			if got[i] < want[i] {
				got[i]++
				left--
				grew = true
			}
		}
		if !grew {
			break
		}
	}
	return got
}
