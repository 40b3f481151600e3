// Copyright IBM Corp. 2014, 2026 (parts derived from hashicorp/mdns)
// Copyright the lancache authors
// SPDX-License-Identifier: MIT

package mdns

import (
	"errors"
	"strings"
)

// MaxLabel is the longest DNS label in bytes (RFC 1035 §2.3.4).
const MaxLabel = 63

var errLabel = errors.New("bad DNS label escape")

// EscapeLabel returns label in the presentation format miekg/dns gives
// unpacked names (msg.go, UnpackDomainName), so that names compare equal as
// strings: the bytes . space ' @ ; ( ) " \ get a backslash, other bytes
// outside printable ASCII become \DDD. An instance name such as
// "Ana's laptop.home" thus stays one label.
func EscapeLabel(label string) string {
	var b strings.Builder
	for i := 0; i < len(label); i++ {
		c := label[i]
		switch {
		case strings.IndexByte(`. '@;()"\`, c) >= 0:
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c > 0x7e:
			b.WriteByte('\\')
			b.WriteByte('0' + c/100)
			b.WriteByte('0' + c/10%10)
			b.WriteByte('0' + c%10)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// UnescapeLabel undoes EscapeLabel (and miekg/dns's own escaping) for one
// label in presentation format. It fails on a malformed escape or a label
// longer than MaxLabel bytes.
func UnescapeLabel(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		if len(s) > MaxLabel {
			return "", errLabel
		}
		return s, nil
	}
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		if i+1 >= len(s) {
			return "", errLabel
		}
		if d := s[i+1]; d >= '0' && d <= '9' {
			if i+4 > len(s) {
				return "", errLabel
			}
			v := 0
			for _, x := range []byte(s[i+1 : i+4]) {
				if x < '0' || x > '9' {
					return "", errLabel
				}
				v = v*10 + int(x-'0')
			}
			if v > 255 {
				return "", errLabel
			}
			out = append(out, byte(v))
			i += 3
			continue
		}
		out = append(out, s[i+1])
		i++
	}
	if len(out) > MaxLabel {
		return "", errLabel
	}
	return string(out), nil
}

// firstLabel splits a domain name in presentation format after its first
// unescaped dot: "a\.b.c.d." → "a\.b", "c.d.".
func firstLabel(name string) (label, rest string, ok bool) {
	for i := 0; i < len(name); i++ {
		switch name[i] {
		case '\\':
			i++ // skip the escaped byte; \DDD digits are never dots
		case '.':
			return name[:i], name[i+1:], true
		}
	}
	return "", "", false
}
