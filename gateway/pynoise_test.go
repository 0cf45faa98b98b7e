package gateway

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestEncryptedClientFromProtocolDoc runs an encrypted client written in
// Python from docs/protocol.md and the Noise specification alone
// (testdata/pynoise.py, Noise NK by hand on the cryptography package): it
// must reproduce the doc's test vectors and talk to a real gateway.
func TestEncryptedClientFromProtocolDoc(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		skipOutsideCI(t, "python3 not installed")
	}
	out, err := exec.Command(py, "testdata/pynoise.py", "vectors", "../docs/protocol.md").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 3 {
		skipOutsideCI(t, "python3 lacks the cryptography package (python3-cryptography)")
	}
	if err != nil || strings.Count(string(out), "vectors ok") != 2 {
		t.Fatalf("test vectors from the doc: %v\n%s", err, out)
	}
	s, _ := secureServer(t, EncryptionRequired, nil)
	out, err = exec.Command(py, "testdata/pynoise.py", "live", s.Addr(), testServerKey.Pin(), token(t, 4242, "", time.Hour), "hello sealed").CombinedOutput()
	if err != nil {
		t.Fatalf("python client: %v\n%s", err, out)
	}
	for _, want := range []string{"HELLO_OK carries AUTH_OK", "sealed pong seq=7", "sealed echo seq=9: hello sealed"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("python client output lacks %q:\n%s", want, out)
		}
	}
}
