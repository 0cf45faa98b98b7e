package shake

import (
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"runtime"
	"sync"
)

// recordFn sees one record of a scan: worker w's opener result for rec,
// record i of file f. It runs on worker w's goroutine only.
type recordFn func(w int, t Ticket, err error, rec []byte, f *File, i int)

// scanBlock is the number of records read and handed to a worker at once
// (about 2.3 MB): large sequential reads, few hand-offs.
const scanBlock = 1 << 17

type scanJob struct {
	f     *File
	first int    // index of the block's first record in f
	buf   []byte // whole records
}

// scanFiles checks each file's header against the plan (fileFn), then
// streams its records in large sequential reads: one reader computes the
// record checksum and hands blocks to workers goroutines that open every
// record and call fn. Memory stays at a few blocks per worker however large
// the files are; files are processed one after the other.
func scanFiles(c *Checker, files []string, workers int, progress Progress, fileFn func(f *File) error, fn recordFn) error {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	nbuf := 2*workers + 2
	free := make(chan []byte, nbuf)
	for i := 0; i < nbuf; i++ {
		free <- make([]byte, scanBlock*RecordSize)
	}
	jobs := make(chan scanJob, nbuf)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			o := c.NewOpener()
			for j := range jobs {
				n := len(j.buf) / RecordSize
				for k := 0; k < n; k++ {
					rec := j.buf[k*RecordSize : (k+1)*RecordSize : (k+1)*RecordSize]
					t, err := o.Open(rec)
					fn(w, t, err, rec, j.f, j.first+k)
				}
				if progress != nil {
					progress.Add(int64(n))
				}
				free <- j.buf[:cap(j.buf)]
			}
		}(w)
	}
	err := func() error {
		for _, path := range files {
			if err := scanFile(c, path, fileFn, free, jobs); err != nil {
				return err
			}
		}
		return nil
	}()
	close(jobs)
	wg.Wait()
	return err
}

func scanFile(c *Checker, path string, fileFn func(f *File) error, free chan []byte, jobs chan<- scanJob) error {
	f, err := OpenFile(path) // header and size checks; the mapping is not read
	if err != nil {
		return err
	}
	defer f.Close()
	if f.Tag != c.plan.Tag {
		return fmt.Errorf("%s: plan tag %#x, plan.json has %#x (files of another generation?)", path, f.Tag, c.plan.Tag)
	}
	if fileFn != nil {
		if err := fileFn(f); err != nil {
			return err
		}
	}
	rf, err := os.Open(path)
	if err != nil {
		return err
	}
	defer rf.Close()
	if _, err := rf.Seek(HeaderSize, io.SeekStart); err != nil {
		return err
	}
	var crc uint32
	for first := 0; first < f.Len(); first += scanBlock {
		n := min(scanBlock, f.Len()-first)
		buf := (<-free)[:n*RecordSize]
		if _, err := io.ReadFull(rf, buf); err != nil {
			return fmt.Errorf("%s: %v", path, err)
		}
		crc = crc32.Update(crc, castagnoli, buf)
		jobs <- scanJob{f: f, first: first, buf: buf}
	}
	if crc != f.RecordCRC {
		return fmt.Errorf("%s: record checksum mismatch (file damaged)", path)
	}
	return nil
}
