// Package repocheck holds tests of the repository as a whole: that what
// make test runs covers what the code has (every fuzz target). It has no
// code of its own.
package repocheck
