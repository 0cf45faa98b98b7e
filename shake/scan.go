package shake

import (
	"fmt"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// recordFn sees one record of a scan: worker w's opener result for record
// i of file f. It runs on worker w's goroutine only.
type recordFn func(w int, t Ticket, err error, f *File, i int)

// scanFiles maps each file in turn, checks its header against the plan
// (fileFn) and its record checksum, and runs fn over every record with
// workers goroutines, each on a contiguous range; the checksum is computed
// alongside. Files are processed one after the other, so memory stays at
// one mapping however many files there are.
func scanFiles(c *Checker, files []string, workers int, progress Progress, fileFn func(f *File) error, fn recordFn) error {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	openers := make([]*Opener, workers)
	for i := range openers {
		openers[i] = c.NewOpener()
	}
	for _, path := range files {
		f, err := OpenFile(path)
		if err != nil {
			return err
		}
		if f.Tag != c.plan.Tag {
			f.Close()
			return fmt.Errorf("%s: plan tag %#x, plan.json has %#x (files of another generation?)", path, f.Tag, c.plan.Tag)
		}
		if fileFn != nil {
			if err := fileFn(f); err != nil {
				f.Close()
				return err
			}
		}
		f.Advise(unix.MADV_SEQUENTIAL)
		n := f.Len()
		var wg sync.WaitGroup
		var crcErr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			crcErr = f.CheckCRC()
		}()
		for w := 0; w < workers; w++ {
			lo, hi := n*w/workers, n*(w+1)/workers
			wg.Add(1)
			go func(w, lo, hi int) {
				defer wg.Done()
				o := openers[w]
				const step = 1 << 16
				for i := lo; i < hi; i++ {
					t, err := o.Open(f.Record(i))
					fn(w, t, err, f, i)
					if progress != nil && (i-lo)%step == step-1 {
						progress.Add(step)
					}
				}
				if progress != nil {
					progress.Add(int64((hi - lo) % step))
				}
			}(w, lo, hi)
		}
		wg.Wait()
		f.Close()
		if crcErr != nil {
			return crcErr
		}
	}
	return nil
}
