package lancache_test

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// The README's Quick start gives a newcomer exactly two commands: the demo
// and the test suite. The suite's command must work where the user is root
// and there is no sudo (a fresh Debian container), and CI runs the same one.
func TestReadmeQuickStartCommands(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	start := strings.Index(s, "## Quick start")
	end := strings.Index(s[start+1:], "\n## ")
	if start < 0 || end < 0 {
		t.Fatal("README has no Quick start section")
	}
	var cmds []string
	for _, m := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(s[start:start+1+end], -1) {
		for _, line := range strings.Split(strings.TrimSpace(m[1]), "\n") {
			if line = strings.TrimSpace(strings.SplitN(line, "#", 2)[0]); line != "" {
				cmds = append(cmds, line)
			}
		}
	}
	if len(cmds) != 2 || cmds[0] != "go run ./cmd/lancache demo" || cmds[1] != "./test.sh" {
		t.Fatalf("Quick start commands %q, want the demo and ./test.sh (no sudo: root in a container has none)", cmds)
	}
	ci, err := os.ReadFile(".ci/run")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(ci), "exec ./test.sh") {
		t.Fatalf(".ci/run does not run ./test.sh:\n%s", ci)
	}
}
