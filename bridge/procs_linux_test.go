package bridge

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// childrenOf lists the live processes whose parent is pid, from /proc.
func childrenOf(t *testing.T, pid int) []int {
	t.Helper()
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var kids []int
	for _, s := range stats {
		b, err := os.ReadFile(s)
		if err != nil {
			continue // exited meanwhile
		}
		// stat is "pid (comm) state ppid ...", and comm may hold spaces and parentheses.
		rest := string(b[strings.LastIndexByte(string(b), ')')+1:])
		f := strings.Fields(rest)
		if len(f) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid == pid {
			id, _ := strconv.Atoi(filepath.Base(filepath.Dir(s)))
			kids = append(kids, id)
		}
	}
	return kids
}
