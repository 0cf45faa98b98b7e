package shake

import (
	"encoding/json"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
)

// SplitFile is the manifest of a split directory.
const SplitFile = "split.json"

// SplitManifest lists every part of every slot with the instance serving
// it and the instance holding its backup copy.
type SplitManifest struct {
	Version   int         `json:"version"`
	Plan      string      `json:"plan"`
	Tag       uint32      `json:"tag"`
	Instances int         `json:"instances"`
	Parts     []SplitPart `json:"parts"`
}

// SplitPart is one part of a slot: records [First, First+Count) of the
// slot, a primary file on instance Primary and a byte-identical backup on
// instance Backup (paths relative to the split directory).
type SplitPart struct {
	Slot        uint32 `json:"slot"`
	Part        int    `json:"part"`
	Parts       int    `json:"parts"`
	First       uint64 `json:"first"`
	Count       uint64 `json:"count"`
	Primary     int    `json:"primary"`
	Backup      int    `json:"backup"`
	CRC         uint32 `json:"crc32c"`
	PrimaryPath string `json:"primary_path"`
	BackupPath  string `json:"backup_path"`
}

// InstanceDir is the directory of instance i inside a split directory.
func InstanceDir(i int) string { return fmt.Sprintf("inst-%03d", i) }

// BackupOf returns the instance that holds the backup of part p (served by
// instance p) of the slot with index si, for n ≥ 2 instances. The offset
// rotates with the slot so that the parts of a failed instance are taken
// over by different instances in different slots, never by itself.
func BackupOf(p, si, n int) int { return (p + 1 + si%(n-1)) % n }

// Split cuts every slot file of srcDir into one part per instance, writes
// each part as a primary file for its instance and a backup copy for
// another instance under outDir, copies plan.json and writes split.json.
// A part is a contiguous range of the slot file, whose records are already
// shuffled, so every part has the same mix of merchants.
func Split(plan *Plan, srcDir, outDir string, instances int, progress Progress) (*SplitManifest, error) {
	if instances < 2 || instances > NoInstance {
		return nil, fmt.Errorf("instances %d: need 2..%d so that every part has a backup elsewhere", instances, NoInstance-1)
	}
	for i := 0; i < instances; i++ {
		if err := os.MkdirAll(filepath.Join(outDir, InstanceDir(i)), 0o755); err != nil {
			return nil, err
		}
	}
	m := &SplitManifest{Version: 1, Plan: plan.Name, Tag: plan.Tag, Instances: instances}
	for si, s := range plan.Slots {
		f, err := OpenFile(filepath.Join(srcDir, SlotFileName(s.ID)))
		if err != nil {
			return nil, err
		}
		if f.Tag != plan.Tag || f.Slot != s.ID || f.Count != s.Packets {
			f.Close()
			return nil, fmt.Errorf("%s: header (tag %#x slot %d count %d) does not match the plan (tag %#x slot %d count %d)",
				f.Path, f.Tag, f.Slot, f.Count, plan.Tag, s.ID, s.Packets)
		}
		if err := f.CheckCRC(); err != nil {
			f.Close()
			return nil, err
		}
		n := f.Count
		for p := 0; p < instances; p++ {
			lo, hi := n*uint64(p)/uint64(instances), n*uint64(p+1)/uint64(instances)
			recs := f.Records(int(lo), int(hi))
			sp := SplitPart{Slot: s.ID, Part: p, Parts: instances, First: lo, Count: hi - lo,
				Primary: p, Backup: BackupOf(p, si, instances), CRC: crc32.Checksum(recs, castagnoli)}
			name := fmt.Sprintf("slot-%06d.part-%03d", s.ID, p)
			sp.PrimaryPath = filepath.Join(InstanceDir(sp.Primary), name+".llt")
			sp.BackupPath = filepath.Join(InstanceDir(sp.Backup), name+".backup.llt")
			h := Header{Tag: plan.Tag, Slot: s.ID, Part: uint16(p), Parts: uint16(instances),
				Instance: uint16(sp.Primary), Backup: uint16(sp.Backup), RecordCRC: sp.CRC, Count: sp.Count, First: lo}
			for _, rel := range []string{sp.PrimaryPath, sp.BackupPath} {
				if err := writePart(filepath.Join(outDir, rel), h.Marshal(), recs); err != nil {
					f.Close()
					return nil, err
				}
			}
			m.Parts = append(m.Parts, sp)
			if progress != nil {
				progress.Add(int64(sp.Count))
			}
		}
		f.Close()
	}
	data, err := json.MarshalIndent(m, "", " ")
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(filepath.Join(outDir, SplitFile), append(data, '\n'), 0o644); err != nil {
		return nil, err
	}
	return m, plan.WritePlan(outDir)
}

func writePart(path string, header, recs []byte) error {
	f, err := os.OpenFile(path+".tmp", os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(header)
	if err == nil {
		_, err = f.Write(recs)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path + ".tmp")
		return err
	}
	return os.Rename(path+".tmp", path)
}

// LoadSplit reads split.json from a split directory and checks that its
// parts tile every slot of plan, each with a backup on another instance.
func LoadSplit(plan *Plan, dir string) (*SplitManifest, error) {
	data, err := os.ReadFile(filepath.Join(dir, SplitFile))
	if err != nil {
		return nil, err
	}
	var m SplitManifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %v", SplitFile, err)
	}
	if m.Tag != plan.Tag {
		return nil, fmt.Errorf("%s: tag %#x, plan has %#x", SplitFile, m.Tag, plan.Tag)
	}
	next := map[uint32]uint64{}
	for _, p := range m.Parts {
		if p.Primary == p.Backup || p.Primary < 0 || p.Backup < 0 || p.Primary >= m.Instances || p.Backup >= m.Instances {
			return nil, fmt.Errorf("%s: slot %d part %d: primary %d, backup %d", SplitFile, p.Slot, p.Part, p.Primary, p.Backup)
		}
		if next[p.Slot] != p.First {
			return nil, fmt.Errorf("%s: slot %d part %d starts at %d, previous part ends at %d", SplitFile, p.Slot, p.Part, p.First, next[p.Slot])
		}
		next[p.Slot] += p.Count
	}
	for _, s := range plan.Slots {
		if next[s.ID] != s.Packets {
			return nil, fmt.Errorf("%s: parts of slot %d cover %d records, plan has %d", SplitFile, s.ID, next[s.ID], s.Packets)
		}
	}
	return &m, nil
}

// VerifySplit verifies a split directory copy by copy: the primaries as
// one set and the backups as another, each must hold every packet of the
// plan exactly once; every part's header must match the manifest.
func VerifySplit(plan *Plan, keys *KeyStore, dir string, opts VerifyOptions) (primary, backup *VerifyReport, err error) {
	m, err := LoadSplit(plan, dir)
	if err != nil {
		return nil, nil, err
	}
	var pf, bf []string
	want := map[string]SplitPart{}
	for _, p := range m.Parts {
		pp, bp := filepath.Join(dir, p.PrimaryPath), filepath.Join(dir, p.BackupPath)
		pf, bf = append(pf, pp), append(bf, bp)
		want[pp], want[bp] = p, p
	}
	for _, files := range [][]string{pf, bf} {
		for _, path := range files {
			f, err := OpenFile(path)
			if err != nil {
				return nil, nil, err
			}
			p := want[path]
			f.Close()
			if f.Slot != p.Slot || int(f.Part) != p.Part || int(f.Parts) != p.Parts || f.First != p.First || f.Count != p.Count ||
				int(f.Instance) != p.Primary || int(f.Backup) != p.Backup || f.RecordCRC != p.CRC {
				return nil, nil, fmt.Errorf("%s: header does not match %s", path, SplitFile)
			}
		}
	}
	if primary, err = Verify(plan, keys, pf, opts); err != nil {
		return nil, nil, err
	}
	if backup, err = Verify(plan, keys, bf, opts); err != nil {
		return nil, nil, err
	}
	return primary, backup, nil
}
