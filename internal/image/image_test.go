package image

import (
	"bytes"
	"encoding/binary"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestValidTemplateName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ok   bool
	}{
		{"minimal", true},
		{"a", true},
		{"0", true},
		{"python-3.12_slim", true},
		{"tpl-abcdefghijklmnopqrst", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{".", false},
		{"..", false},
		{".hidden", false},
		{"-flag", false},
		{"_x", false},
		{"a/b", false},
		{"../etc", false},
		{"Minimal", false},
		{"with space", false},
		{"semi;colon", false},
		{"comma,x", false},
		{"colon:x", false},
		{"ünï", false},
		{"a\x00b", false},
	}
	for _, tt := range tests {
		if got := ValidTemplateName(tt.name); got != tt.ok {
			t.Errorf("ValidTemplateName(%q) = %v, want %v", tt.name, got, tt.ok)
		}
	}
}

func FuzzValidTemplateName(f *testing.F) {
	for _, s := range []string{"minimal", "..", "a/b", "a.b-c_d", "", strings.Repeat("z", 70), "A", "x\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if !ValidTemplateName(name) {
			return
		}
		// A valid name is one harmless path element under any base.
		if len(name) > 63 || strings.ContainsAny(name, "/\\\x00,: \n") || name == "." || name == ".." {
			t.Fatalf("accepted %q", name)
		}
		base := "/var/lib/wrenn/images"
		p := filepath.Join(base, name)
		if filepath.Dir(p) != base || filepath.Base(p) != name {
			t.Fatalf("%q escapes or changes under %s: %s", name, base, p)
		}
		if strings.ToLower(name) != name || name[0] == '.' || name[0] == '-' {
			t.Fatalf("accepted %q", name)
		}
	})
}

func TestParseMountinfo(t *testing.T) {
	t.Parallel()
	text := `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
101 22 7:3 / /run/wrenn/templates/minimal ro,relatime shared:50 - ext4 /dev/loop3 ro
102 22 0:60 / /var/lib/wrenn/sandboxes/sb-a/rootfs rw,relatime - overlay overlay rw,lowerdir=/run/wrenn/templates/minimal,upperdir=/x/upper,workdir=/x/work
103 22 0:61 / /tmp/with\040space rw - tmpfs tmp\134fs rw
bad line
`
	got := parseMountinfo(text)
	want := []mountEntry{
		{"/", "ext4", "/dev/sda1", "rw"},
		{"/run/wrenn/templates/minimal", "ext4", "/dev/loop3", "ro"},
		{"/var/lib/wrenn/sandboxes/sb-a/rootfs", "overlay", "overlay", "rw,lowerdir=/run/wrenn/templates/minimal,upperdir=/x/upper,workdir=/x/work"},
		{"/tmp/with space", "tmpfs", `tmp\fs`, "rw"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("parseMountinfo =\n%+v\nwant\n%+v", got, want)
	}
	if m, ok := mountAt(got, "/tmp/with space"); !ok || m.FSType != "tmpfs" {
		t.Errorf("mountAt = %+v, %v", m, ok)
	}
	if users := overlaysOn(got, "/run/wrenn/templates/minimal"); !reflect.DeepEqual(users, []string{"/var/lib/wrenn/sandboxes/sb-a/rootfs"}) {
		t.Errorf("overlaysOn = %q", users)
	}
	if users := overlaysOn(got, "/run/wrenn/templates/min"); len(users) != 0 {
		t.Errorf("overlaysOn matched a prefix: %q", users)
	}
	if _, ok := mountAt(got, "/nope"); ok {
		t.Error("mountAt found a mount that is not there")
	}
}

func superblock(blocksLo, blocksHi, logBlock, incompat uint32, magic uint16) []byte {
	img := make([]byte, 4096)
	sb := img[1024:]
	le := binary.LittleEndian
	le.PutUint32(sb[0x4:], blocksLo)
	le.PutUint32(sb[0x18:], logBlock)
	le.PutUint16(sb[0x38:], magic)
	le.PutUint32(sb[0x60:], incompat)
	le.PutUint32(sb[0x150:], blocksHi)
	return img
}

func TestExt4Size(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		img  []byte
		want uint64
		err  error
	}{
		{"4k blocks", superblock(4096, 0, 2, 0, 0xEF53), 16 << 20, nil},
		{"1k blocks", superblock(1024, 0, 0, 0, 0xEF53), 1 << 20, nil},
		{"hi ignored without 64bit", superblock(10, 1, 2, 0, 0xEF53), 10 * 4096, nil},
		{"64bit", superblock(0, 1, 2, 0x80, 0xEF53), 1 << 44, nil},
		{"bad magic", superblock(4096, 0, 2, 0, 0x1234), 0, ErrInvalid},
		{"absurd block size", superblock(1, 0, 30, 0, 0xEF53), 0, ErrInvalid},
	}
	for _, tt := range tests {
		got, err := ext4Size(bytes.NewReader(tt.img))
		if !errors.Is(err, tt.err) || got != tt.want {
			t.Errorf("%s: ext4Size = %d, %v; want %d, %v", tt.name, got, err, tt.want, tt.err)
		}
	}
	if _, err := ext4Size(bytes.NewReader(make([]byte, 100))); err == nil {
		t.Error("ext4Size of a short file succeeded")
	}
}
