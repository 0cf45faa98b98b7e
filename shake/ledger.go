package shake

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// The ledger export (written by part 2's ledger, read by Reconcile) is CSV
// without quoting, one opened packet per line, after a header line that
// names the columns:
//
//	packet_id,amount_fen,uid,opened_at,sealed
//	1234567,270,10086,2016-02-07T20:00:01.123+08:00,01a3…(122 hex digits)
//
// packet_id and amount_fen are required (decimal integers; the amount in
// fen, 1 ≤ amount ≤ MaxPacketAmount). uid (decimal) and sealed (the claim's
// proof: the sealed ticket the user opened, SealedSize bytes in hex, or
// empty) are optional columns; Reconcile with seal keys requires them and
// checks the user too. Any other columns are carried but ignored, in any
// order. Fields must not contain commas or quotes.
// Lines end in \n (a \r before it is dropped); blank lines are skipped.
const maxLedgerLine = 4096

// LedgerEntry is one opened packet.
type LedgerEntry struct {
	PacketID  uint64
	Amount    Money
	UID       uint64
	HasUID    bool
	Sealed    [SealedSize]byte
	HasSealed bool
	Line      int // 1-based line number in the export
}

// LedgerReader reads a ledger export line by line without allocating per
// line. Not safe for concurrent use.
type LedgerReader struct {
	r        *bufio.Reader
	line     int
	cols     int
	pid, amt int
	uid, sld int // optional columns; -1: absent
}

// NewLedgerReader reads and checks the header line.
func NewLedgerReader(r io.Reader) (*LedgerReader, error) {
	lr := &LedgerReader{r: bufio.NewReaderSize(r, 1<<16), pid: -1, amt: -1, uid: -1, sld: -1}
	hdr, err := lr.readLine()
	if err == io.EOF {
		return nil, fmt.Errorf("%w: empty export, want a header line", ErrBadLedger)
	}
	if err != nil {
		return nil, err
	}
	names := bytes.Split(hdr, []byte(","))
	lr.cols = len(names)
	for i, n := range names {
		switch string(bytes.TrimSpace(n)) {
		case "packet_id":
			if lr.pid >= 0 {
				return nil, fmt.Errorf("%w: line 1: packet_id named twice", ErrBadLedger)
			}
			lr.pid = i
		case "amount_fen":
			if lr.amt >= 0 {
				return nil, fmt.Errorf("%w: line 1: amount_fen named twice", ErrBadLedger)
			}
			lr.amt = i
		case "uid":
			if lr.uid >= 0 {
				return nil, fmt.Errorf("%w: line 1: uid named twice", ErrBadLedger)
			}
			lr.uid = i
		case "sealed":
			if lr.sld >= 0 {
				return nil, fmt.Errorf("%w: line 1: sealed named twice", ErrBadLedger)
			}
			lr.sld = i
		}
	}
	if lr.pid < 0 || lr.amt < 0 {
		return nil, fmt.Errorf("%w: line 1: header must name packet_id and amount_fen, got %q", ErrBadLedger, hdr)
	}
	return lr, nil
}

// readLine returns the next non-blank line without its end, io.EOF at the
// end.
func (lr *LedgerReader) readLine() ([]byte, error) {
	for {
		b, err := lr.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) || len(b) > maxLedgerLine {
			return nil, fmt.Errorf("%w: line %d longer than %d bytes", ErrBadLedger, lr.line+1, maxLedgerLine)
		}
		if err != nil && err != io.EOF {
			return nil, err
		}
		if len(b) == 0 && err == io.EOF {
			return nil, io.EOF
		}
		lr.line++
		b = bytes.TrimSuffix(b, []byte("\n"))
		b = bytes.TrimSuffix(b, []byte("\r"))
		if len(b) > 0 {
			return b, nil
		}
		if err == io.EOF {
			return nil, io.EOF
		}
	}
}

// Next returns the next entry, or io.EOF after the last.
func (lr *LedgerReader) Next() (LedgerEntry, error) {
	b, err := lr.readLine()
	if err != nil {
		return LedgerEntry{}, err
	}
	e := LedgerEntry{Line: lr.line}
	col, start := 0, 0
	for i := 0; i <= len(b); i++ {
		if i < len(b) && b[i] != ',' {
			if b[i] == '"' {
				return e, fmt.Errorf("%w: line %d: quotes are not allowed", ErrBadLedger, lr.line)
			}
			continue
		}
		f := b[start:i]
		switch col {
		case lr.pid:
			v, ok := parseUint(f)
			if !ok || v >= MaxPackets {
				return e, fmt.Errorf("%w: line %d: packet_id %q", ErrBadLedger, lr.line, f)
			}
			e.PacketID = v
		case lr.amt:
			v, ok := parseUint(f)
			if !ok || v < 1 || v > uint64(MaxPacketAmount) {
				return e, fmt.Errorf("%w: line %d: amount_fen %q", ErrBadLedger, lr.line, f)
			}
			e.Amount = Money(v)
		case lr.uid:
			v, ok := parseUint(f)
			if !ok {
				return e, fmt.Errorf("%w: line %d: uid %q", ErrBadLedger, lr.line, f)
			}
			e.UID, e.HasUID = v, true
		case lr.sld:
			if len(f) == 0 {
				break
			}
			if len(f) != 2*SealedSize {
				return e, fmt.Errorf("%w: line %d: sealed is %d hex digits, want %d", ErrBadLedger, lr.line, len(f), 2*SealedSize)
			}
			if _, err := hex.Decode(e.Sealed[:], f); err != nil {
				return e, fmt.Errorf("%w: line %d: sealed is not hex", ErrBadLedger, lr.line)
			}
			e.HasSealed = true
		}
		col++
		start = i + 1
	}
	if col != lr.cols {
		return e, fmt.Errorf("%w: line %d: %d fields, header has %d", ErrBadLedger, lr.line, col, lr.cols)
	}
	return e, nil
}

// parseUint parses a plain decimal (no sign, at most 19 digits).
func parseUint(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	return v, true
}

// LedgerWriter writes the export format (tests, and part 2's exporter).
type LedgerWriter struct{ w *bufio.Writer }

// NewLedgerWriter writes the header line.
func NewLedgerWriter(w io.Writer) (*LedgerWriter, error) {
	bw := bufio.NewWriterSize(w, 1<<16)
	_, err := bw.WriteString("packet_id,amount_fen,uid,opened_at,sealed\n")
	return &LedgerWriter{w: bw}, err
}

// Write appends one opened packet without its proof.
func (lw *LedgerWriter) Write(pid uint64, amount Money, uid uint64, openedAt string) error {
	return lw.WriteClaim(pid, amount, uid, openedAt, nil)
}

// WriteClaim appends one opened packet with its proof (the sealed ticket,
// or nil).
func (lw *LedgerWriter) WriteClaim(pid uint64, amount Money, uid uint64, openedAt string, sealed []byte) error {
	var buf [96 + 2*SealedSize]byte
	b := strconv.AppendUint(buf[:0], pid, 10)
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(amount), 10)
	b = append(b, ',')
	b = strconv.AppendUint(b, uid, 10)
	b = append(b, ',')
	b = append(b, openedAt...)
	b = append(b, ',')
	b = hex.AppendEncode(b, sealed)
	b = append(b, '\n')
	_, err := lw.w.Write(b)
	return err
}

// Flush flushes buffered lines.
func (lw *LedgerWriter) Flush() error { return lw.w.Flush() }
