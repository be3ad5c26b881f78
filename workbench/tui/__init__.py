"""The Textual TUI: a window onto the run store and the detached workers; it never owns a run and never
imports torch."""
