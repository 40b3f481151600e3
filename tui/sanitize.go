package tui

import (
	"reflect"
	"strings"

	"github.com/lancache/lancache/statusapi"
)

// sanitizeStatus replaces every control character (C0, DEL, C1) in the
// strings of st with U+FFFD. The status comes from a daemon that may be
// another machine's (--http), and its names from peers and store paths:
// none of it may write escape sequences to the user's terminal.
func sanitizeStatus(st *statusapi.Status) {
	sanitizeValue(reflect.ValueOf(st).Elem())
}

func sanitizeValue(v reflect.Value) {
	switch v.Kind() {
	case reflect.String:
		if s := v.String(); strings.IndexFunc(s, isControl) >= 0 {
			v.SetString(strings.Map(func(r rune) rune {
				if isControl(r) {
					return '\uFFFD'
				}
				return r
			}, s))
		}
	case reflect.Pointer:
		if !v.IsNil() {
			sanitizeValue(v.Elem())
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				sanitizeValue(v.Field(i))
			}
		}
	case reflect.Slice:
		for i := range v.Len() {
			sanitizeValue(v.Index(i))
		}
	}
}

func isControl(r rune) bool { return r < 0x20 || (r >= 0x7f && r < 0xa0) }
