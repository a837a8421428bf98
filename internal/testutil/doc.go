// Package testutil holds what the privileged tests of every package share:
// gating on privileges (skip without them, fail under CI=true), and fresh
// network namespaces that a test enters on a locked OS thread and that are
// removed when the test ends, also when it fails.
package testutil
