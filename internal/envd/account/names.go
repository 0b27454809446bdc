package account

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Names maps numeric ids to names for showing file owners. Unknown ids show
// as their number, as ls does.
type Names struct {
	users  map[uint32]string
	groups map[uint32]string
}

// User returns the name of uid, or uid in decimal.
func (n Names) User(uid uint32) string {
	if s, ok := n.users[uid]; ok {
		return s
	}
	return strconv.FormatUint(uint64(uid), 10)
}

// Group returns the name of gid, or gid in decimal.
func (n Names) Group(gid uint32) string {
	if s, ok := n.groups[gid]; ok {
		return s
	}
	return strconv.FormatUint(uint64(gid), 10)
}

// Names reads every user and group name. Missing files give empty maps.
func (d Database) Names() (Names, error) {
	n := Names{users: map[uint32]string{}, groups: map[uint32]string{}}
	for _, f := range []struct {
		file string
		into map[uint32]string
	}{{"passwd", n.users}, {"group", n.groups}} {
		fh, err := os.Open(d.path(f.file))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return Names{}, fmt.Errorf("read %s: %w", f.file, err)
		}
		err = readIDNames(fh, f.into)
		fh.Close()
		if err != nil {
			return Names{}, fmt.Errorf("read %s: %w", f.file, err)
		}
	}
	return n, nil
}

// readIDNames reads "name:x:id:..." lines (passwd and group share the
// first three fields); the first name of an id wins, as in getpwuid.
func readIDNames(r io.Reader, into map[uint32]string) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), ":", 4)
		if len(f) < 3 || f[0] == "" || strings.HasPrefix(f[0], "#") {
			continue
		}
		id, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil {
			continue
		}
		if _, ok := into[uint32(id)]; !ok {
			into[uint32(id)] = f[0]
		}
	}
	return sc.Err()
}
