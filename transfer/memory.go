package transfer

import (
	"runtime/debug"
	"sync"
	"time"
)

// memoryReturner gives memory the inventory index freed back to the OS.
// Go returns freed heap only after a collection and then slowly, and an
// idle daemon may not collect for minutes: after a hostile peer's offer is
// dropped its memory would stay resident. A forced collection costs CPU in
// proportion to the live heap, so it runs at most every memoryInterval, a
// little after the frees that asked for it, and only once they add up to
// memoryMin.
type memoryReturner struct {
	mu      sync.Mutex
	pending int         // bytes freed since the last return
	timer   *time.Timer // scheduled return, if any
	last    time.Time   // last return
	stopped bool
	wg      sync.WaitGroup // a return scheduled or running
}

const (
	memoryMin      = 16 << 20
	memoryDelay    = time.Second
	memoryInterval = 10 * time.Second
)

// freed records that about bytes were freed.
func (m *memoryReturner) freed(bytes int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pending += bytes
	if m.stopped || m.timer != nil || m.pending < memoryMin {
		return
	}
	wait := max(memoryDelay, time.Until(m.last.Add(memoryInterval)))
	m.wg.Add(1)
	m.timer = time.AfterFunc(wait, m.run)
}

func (m *memoryReturner) run() {
	defer m.wg.Done()
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return
	}
	m.timer, m.pending, m.last = nil, 0, time.Now()
	m.mu.Unlock()
	debug.FreeOSMemory()
}

// stop cancels a scheduled return and waits for one running.
func (m *memoryReturner) stop() {
	m.mu.Lock()
	m.stopped = true
	if m.timer != nil && m.timer.Stop() {
		m.wg.Done()
	}
	m.timer = nil
	m.mu.Unlock()
	m.wg.Wait()
}
