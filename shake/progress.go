package shake

import (
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"
)

// Bar is a terminal progress bar redrawn in place a few times a second.
// Add is goroutine-safe and cheap (one atomic add).
type Bar struct {
	label string
	total int64
	n     atomic.Int64
	w     io.Writer
	start time.Time
	stop  chan struct{}
	done  chan struct{}
}

// NewBar starts a bar on w (a terminal) for total units.
func NewBar(w io.Writer, label string, total int64) *Bar {
	b := &Bar{label: label, total: max(total, 1), w: w, start: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	go b.loop()
	return b
}

// Add counts n more units done.
func (b *Bar) Add(n int64) { b.n.Add(n) }

// Finish draws the final state and ends the line.
func (b *Bar) Finish() {
	close(b.stop)
	<-b.done
}

func (b *Bar) loop() {
	defer close(b.done)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			b.draw(false)
		case <-b.stop:
			b.draw(true)
			return
		}
	}
}

func (b *Bar) draw(final bool) {
	n := min(b.n.Load(), b.total)
	el := time.Since(b.start).Seconds()
	rate := float64(n) / max(el, 1e-9)
	const width = 30
	fill := int(int64(width) * n / b.total)
	eta := "  "
	if rate > 0 && !final {
		eta = fmt.Sprintf("ETA %3.0fs", float64(b.total-n)/rate)
	}
	end := "\r"
	if final {
		end = "\n"
	}
	fmt.Fprintf(b.w, "\r%-9s [%s%s] %5.1f%% %s/%s %s/s %s%s", b.label, strings.Repeat("#", fill), strings.Repeat(" ", width-fill),
		100*float64(n)/float64(b.total), si(float64(n)), si(float64(b.total)), si(rate), eta, end)
}

// si formats with a metric suffix: 12.3M.
func si(v float64) string {
	switch {
	case v >= 1e9:
		return fmt.Sprintf("%.2fG", v/1e9)
	case v >= 1e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}
