package shake

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"

	"golang.org/x/sys/unix"
)

// Ticket file format, version 1 (all integers little-endian):
//
//	off len  field
//	  0   8  magic "LLTICKET"
//	  8   2  version (1)
//	 10   2  record size (18)
//	 12   4  plan tag (28 bits; the tag inside every ticket)
//	 16   4  slot id
//	 20   2  part index within the slot (0 for a whole-slot file)
//	 22   2  part count (1 for a whole-slot file)
//	 24   2  instance that serves this part (0xFFFF: unassigned)
//	 26   2  instance holding the backup copy (0xFFFF: none)
//	 28   4  CRC-32C of the record bytes
//	 32   8  record count
//	 40   8  index of the first record within the slot
//	 48  12  reserved, zero
//	 60   4  CRC-32C of bytes 0..59
//	 64      records, RecordSize bytes each, no padding
//
// The file is exactly HeaderSize + count×RecordSize bytes, so it can be
// memory-mapped and record i read at HeaderSize + i×RecordSize. The CRCs
// catch accidental damage; forgery is the ticket's job (see ticket.go).
const (
	HeaderSize    = 64
	FileVersion   = 1
	NoInstance    = 0xFFFF
	fileMagic     = "LLTICKET"
	maxFileRecord = (1<<62 - HeaderSize) / RecordSize
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Header is the decoded header of a ticket file.
type Header struct {
	Tag       uint32
	Slot      uint32
	Part      uint16
	Parts     uint16
	Instance  uint16
	Backup    uint16
	RecordCRC uint32
	Count     uint64
	First     uint64
}

// Marshal encodes h into a HeaderSize-byte block.
func (h *Header) Marshal() []byte {
	b := make([]byte, HeaderSize)
	copy(b, fileMagic)
	le := binary.LittleEndian
	le.PutUint16(b[8:], FileVersion)
	le.PutUint16(b[10:], RecordSize)
	le.PutUint32(b[12:], h.Tag)
	le.PutUint32(b[16:], h.Slot)
	le.PutUint16(b[20:], h.Part)
	le.PutUint16(b[22:], h.Parts)
	le.PutUint16(b[24:], h.Instance)
	le.PutUint16(b[26:], h.Backup)
	le.PutUint32(b[28:], h.RecordCRC)
	le.PutUint64(b[32:], h.Count)
	le.PutUint64(b[40:], h.First)
	le.PutUint32(b[60:], crc32.Checksum(b[:60], castagnoli))
	return b
}

// ParseHeader decodes and checks a header; errors wrap ErrBadHeader.
func ParseHeader(b []byte) (Header, error) {
	var h Header
	if len(b) < HeaderSize {
		return h, fmt.Errorf("%w: %d bytes, want %d", ErrBadHeader, len(b), HeaderSize)
	}
	le := binary.LittleEndian
	switch {
	case string(b[:8]) != fileMagic:
		return h, fmt.Errorf("%w: not a ticket file (magic %q)", ErrBadHeader, b[:8])
	case le.Uint32(b[60:]) != crc32.Checksum(b[:60], castagnoli):
		return h, fmt.Errorf("%w: header checksum mismatch", ErrBadHeader)
	case le.Uint16(b[8:]) != FileVersion:
		return h, fmt.Errorf("%w: version %d, want %d", ErrBadHeader, le.Uint16(b[8:]), FileVersion)
	case le.Uint16(b[10:]) != RecordSize:
		return h, fmt.Errorf("%w: record size %d, want %d", ErrBadHeader, le.Uint16(b[10:]), RecordSize)
	}
	for _, c := range b[48:60] {
		if c != 0 {
			return h, fmt.Errorf("%w: reserved bytes not zero", ErrBadHeader)
		}
	}
	h = Header{
		Tag: le.Uint32(b[12:]), Slot: le.Uint32(b[16:]), Part: le.Uint16(b[20:]), Parts: le.Uint16(b[22:]),
		Instance: le.Uint16(b[24:]), Backup: le.Uint16(b[26:]), RecordCRC: le.Uint32(b[28:]),
		Count: le.Uint64(b[32:]), First: le.Uint64(b[40:]),
	}
	switch {
	case h.Tag > tagMask:
		return h, fmt.Errorf("%w: tag wider than %d bits", ErrBadHeader, tagBits)
	case h.Parts == 0 || h.Part >= h.Parts:
		return h, fmt.Errorf("%w: part %d of %d", ErrBadHeader, h.Part, h.Parts)
	case h.Count > maxFileRecord || h.First > maxFileRecord:
		return h, fmt.Errorf("%w: record count %d too large", ErrBadHeader, h.Count)
	}
	return h, nil
}

// File is a memory-mapped ticket file. Safe for concurrent reads.
type File struct {
	Header
	Path string
	data []byte // whole mapping
	recs []byte // records
}

// OpenFile maps a ticket file read-only and checks its header and size.
// It does not read the records (see CheckCRC): opening is instant even for
// gigabytes, as the gateway needs on start-up.
func OpenFile(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if size < HeaderSize {
		return nil, fmt.Errorf("%s: %w: file shorter than a header", path, ErrBadHeader)
	}
	hb := make([]byte, HeaderSize)
	if _, err := f.ReadAt(hb, 0); err != nil {
		return nil, err
	}
	h, err := ParseHeader(hb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if want := int64(HeaderSize) + int64(h.Count)*RecordSize; size != want {
		return nil, fmt.Errorf("%s: %w: size %d, header says %d records (%d bytes)", path, ErrBadHeader, size, h.Count, want)
	}
	tf := &File{Header: h, Path: path}
	if h.Count == 0 {
		return tf, nil
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("%s: mmap: %v", path, err)
	}
	tf.data = data
	tf.recs = data[HeaderSize:]
	return tf, nil
}

// Len returns the number of records.
func (f *File) Len() int { return int(f.Count) }

// Record returns record i (RecordSize bytes, aliasing the mapping: valid
// until Close, read-only).
func (f *File) Record(i int) []byte {
	return f.recs[i*RecordSize : (i+1)*RecordSize : (i+1)*RecordSize]
}

// Records returns records [i, j) as one slice aliasing the mapping.
func (f *File) Records(i, j int) []byte { return f.recs[i*RecordSize : j*RecordSize] }

// Advise tells the kernel how the records will be read (unix.MADV_*).
func (f *File) Advise(advice int) {
	if f.data != nil {
		_ = unix.Madvise(f.data, advice) // a hint; failure changes nothing
	}
}

// CheckCRC reads every record and compares the checksum in the header.
func (f *File) CheckCRC() error {
	if crc32.Checksum(f.recs, castagnoli) != f.RecordCRC {
		return fmt.Errorf("%s: record checksum mismatch (file damaged)", f.Path)
	}
	return nil
}

// Close unmaps the file. Records obtained before must not be used after.
func (f *File) Close() error {
	if f.data == nil {
		return nil
	}
	err := unix.Munmap(f.data)
	f.data, f.recs = nil, nil
	return err
}

func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }
