// Package statusapi is the schema of a lancache daemon's status API: the
// JSON documents served at [StatusPath] and, as Server-Sent Events, at
// [EventsPath], and the values their enumerated fields take.
//
// The daemon (package lancache) fills these types; `lancache status` and
// `lancache top` (package tui) decode them. Both sides import this package
// and nothing else of each other, so a value the daemon emits is one the UI
// knows by construction. The package holds types and constants only: no
// I/O, no dependencies beyond the standard library.
package statusapi
