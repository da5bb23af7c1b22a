package config

import (
	"slices"
	"strings"
	"testing"
)

func TestParseCPUMask(t *testing.T) {
	for s, want := range map[string][]int{
		"":                             nil,
		"0":                            nil,
		"0x0":                          nil,
		"1":                            {0},
		"3":                            {0, 1},
		"0x4":                          {2},
		"10":                           {4}, // hex, as DRBD reads it: not CPUs 1 and 3
		"ff":                           {0, 1, 2, 3, 4, 5, 6, 7},
		"A":                            {1, 3},
		"1,00000000":                   {32},
		"0x3,80000001":                 {0, 31, 32, 33},
		" 2 ":                          {1},
		"8" + strings.Repeat("0", 255): {1023},
	} {
		m, err := ParseCPUMask(s)
		if err != nil || !slices.Equal(m.CPUs(), want) || m.Empty() != (len(want) == 0) {
			t.Errorf("ParseCPUMask(%q) = %v, %v; want %v", s, m.CPUs(), err, want)
		}
	}
	for s, want := range map[string]string{
		"0x":                           "no hex digits",
		"g":                            `"g" is not a hex digit`,
		"-1":                           "not a hex digit",
		"0-3":                          "not a hex digit",
		"1,0":                          "8 hex digits",
		",1":                           "8 hex digits",
		"1,":                           "8 hex digits",
		"123456789,00000000":           "8 hex digits",
		"1" + strings.Repeat("0", 256): "beyond the 1024",
		strings.Repeat("f", 400):       "longer than a mask of 1024 CPUs",
	} {
		if _, err := ParseCPUMask(s); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseCPUMask(%q): %v, want an error with %q", s, err, want)
		}
	}
}

// cpu-mask in [resource] applies to every node; a node's own, even "0",
// takes precedence; an integer or a bad mask is refused with the key named.
func TestCPUMaskKeys(t *testing.T) {
	f, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := f.Node("alpha")
	if m := f.NodeCPUMask(a); !m.Empty() || m.String() != "0" {
		t.Fatalf("default cpu-mask = %v (%s), want none", m.CPUs(), m)
	}
	src := strings.Replace(good, `protocol = "c"`, "protocol = \"c\"\ncpu-mask = \"3\"", 1)
	src = strings.Replace(src, `admin = "/tmp/b.sock"`, "admin = \"/tmp/b.sock\"\ncpu-mask = \"0x4\"", 1)
	if f, err = Parse([]byte(src)); err != nil {
		t.Fatal(err)
	}
	a, _ = f.Node("alpha")
	b, _ := f.Node("beta")
	if !slices.Equal(f.NodeCPUMask(a).CPUs(), []int{0, 1}) || !slices.Equal(f.NodeCPUMask(b).CPUs(), []int{2}) || f.NodeCPUMask(b).String() != "0x4" {
		t.Fatalf("alpha's cpu-mask %v, beta's %v (%s)", f.NodeCPUMask(a).CPUs(), f.NodeCPUMask(b).CPUs(), f.NodeCPUMask(b))
	}
	src = strings.Replace(src, `cpu-mask = "0x4"`, `cpu-mask = "0"`, 1)
	if f, err = Parse([]byte(src)); err != nil {
		t.Fatal(err)
	}
	b, _ = f.Node("beta")
	if !f.NodeCPUMask(b).Empty() {
		t.Fatalf("beta's cpu-mask \"0\" under the resource's \"3\" = %v, want none", f.NodeCPUMask(b).CPUs())
	}
	for _, c := range []struct{ old, new, want string }{
		{`protocol = "c"`, "protocol = \"c\"\ncpu-mask = 3", `cpu-mask 3: write the hexadecimal mask as a string`},
		{`protocol = "c"`, "protocol = \"c\"\ncpu-mask = \"0-1\"", `cpu-mask "0-1"`},
		{`admin = "/tmp/a.sock"`, "admin = \"/tmp/a.sock\"\ncpu-mask = \"zz\"", `cpu-mask "zz"`},
	} {
		_, err := Parse([]byte(strings.Replace(good, c.old, c.new, 1)))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "cpu-mask") {
			t.Errorf("%q: %v, want an error with %q", c.new, err, c.want)
		}
	}
}
