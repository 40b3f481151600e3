package discovery

import (
	"errors"
	"strings"
	"testing"
)

func TestParseTXT(t *testing.T) {
	id := "0f3vbd3k5ns8w9q8i3hbnxvq2gkj6wa3y0g2ly0dxz6ky1l4dlka"
	tests := []struct {
		name string
		txt  []string
		want txtInfo
		err  error
	}{
		{"minimal", []string{"v=1", "id=" + id}, txtInfo{Version: 1, ID: id}, nil},
		{"fleet", []string{"v=1", "id=" + id, "fleet=ab12"}, txtInfo{Version: 1, ID: id, Fleet: "ab12"}, nil},
		{"any order", []string{"fleet=x", "id=a", "v=2"}, txtInfo{Version: 2, ID: "a", Fleet: "x"}, nil},
		{"keys case-insensitive", []string{"V=1", "ID=a", "Fleet=f"}, txtInfo{Version: 1, ID: "a", Fleet: "f"}, nil},
		{"first wins", []string{"v=1", "id=a", "id=b", "v=7"}, txtInfo{Version: 1, ID: "a"}, nil},
		{"unknown keys and booleans ignored", []string{"x=y", "flag", "", "v=1", "id=a"}, txtInfo{Version: 1, ID: "a"}, nil},
		{"missing version", []string{"id=a"}, txtInfo{}, errTXTNoVersion},
		{"missing id", []string{"v=1"}, txtInfo{}, errTXTNoID},
		{"empty", nil, txtInfo{}, errTXTNoVersion},
		{"version not a number", []string{"v=one", "id=a"}, txtInfo{}, errTXTNoVersion},
		{"version negative", []string{"v=-1", "id=a"}, txtInfo{}, errTXTNoVersion},
		{"version huge", []string{"v=99999999999999999999", "id=a"}, txtInfo{}, errTXTNoVersion},
		{"version with sign", []string{"v=+1", "id=a"}, txtInfo{Version: 1, ID: "a"}, nil},
		{"id empty", []string{"v=1", "id="}, txtInfo{}, errTXTNoID},
		{"id too long", []string{"v=1", "id=" + strings.Repeat("a", 65)}, txtInfo{}, errTXTNoID},
		{"id bad byte", []string{"v=1", "id=a/b"}, txtInfo{}, errTXTNoID},
		{"id with space", []string{"v=1", "id=a b"}, txtInfo{}, errTXTNoID},
		{"fleet empty", []string{"v=1", "id=a", "fleet="}, txtInfo{}, errTXTFleet},
		{"fleet control byte", []string{"v=1", "id=a", "fleet=a\x00"}, txtInfo{}, errTXTFleet},
		{"fleet too long", []string{"v=1", "id=a", "fleet=" + strings.Repeat("f", 129)}, txtInfo{}, errTXTFleet},
		{"fleet with equals", []string{"v=1", "id=a", "fleet=a=b"}, txtInfo{Version: 1, ID: "a", Fleet: "a=b"}, nil},
		{"keys beyond the bound ignored", append(make([]string, maxTXTStrings), "v=1", "id=a"), txtInfo{}, errTXTNoVersion},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseTXT(tt.txt)
			if !errors.Is(err, tt.err) {
				t.Fatalf("parseTXT(%q) error = %v, want %v", tt.txt, err, tt.err)
			}
			if got != tt.want {
				t.Fatalf("parseTXT(%q) = %+v, want %+v", tt.txt, got, tt.want)
			}
		})
	}
}

func TestEncodeTXTRoundTrip(t *testing.T) {
	for _, in := range []txtInfo{
		{Version: 1, ID: "abc"},
		{Version: ProtocolVersion, ID: "Z-_9", Fleet: "0123456789abcdef"},
	} {
		got, err := parseTXT(encodeTXT(in))
		if err != nil || got != in {
			t.Errorf("round trip of %+v = %+v, %v", in, got, err)
		}
	}
	if got := encodeTXT(txtInfo{Version: 1, ID: "a"}); len(got) != 2 {
		t.Errorf("no fleet: TXT %q, want no fleet= string", got)
	}
}

// FuzzTXT checks that parseTXT never panics, accepts only well-formed
// values, and that what it accepts survives a round trip.
func FuzzTXT(f *testing.F) {
	f.Add("v=1\x00id=abc\x00fleet=f00")
	f.Add("v=1\x00id=0f3vbd3k5ns8w9q8i3hbnxvq2gkj6wa3y0g2ly0dxz6ky1l4dlka")
	f.Add("V=2\x00ID=a\x00x=y\x00flag")
	f.Add("v=\x00id=\x00fleet=")
	f.Add("v=00001\x00id=a")
	f.Add("v=1\x00id=a\x00fleet=\xff\xfe")
	f.Add("=\x00==\x00v==1")
	f.Add("")
	f.Fuzz(func(t *testing.T, joined string) {
		txt := strings.Split(joined, "\x00")
		info, err := parseTXT(txt)
		if err != nil {
			return
		}
		if !validID(info.ID) || info.Fleet != "" && !validFleet(info.Fleet) || info.Version < 0 {
			t.Fatalf("accepted invalid %+v from %q", info, txt)
		}
		again, err := parseTXT(encodeTXT(info))
		if err != nil || again != info {
			t.Fatalf("round trip of %+v = %+v, %v", info, again, err)
		}
	})
}
