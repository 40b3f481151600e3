// Package tui is `lancache top`: a terminal UI that follows one running
// lancache daemon and shows its neighbours, transfers and totals.
//
// It talks to the daemon only over HTTP: it follows the Server-Sent Events
// stream at /_lancache/events and falls back to polling /_lancache/status
// when the stream is missing or drops. It shares the status schema with the
// daemon through package statusapi and never imports the daemon (package
// lancache). It owns no daemon state and never changes it.
//
// The UI is a Bubble Tea (v2) [Model] fed by a channel of [StatusMsg]s, so
// tests drive it without a daemon; [Run] wires the model to a [Client].
package tui
