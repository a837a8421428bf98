// Package repocheck holds tests of the repository as a whole: that what
// make test runs covers what the code has (every fuzz target), and that the
// committed pictures of docs/ are what their Graphviz sources draw. It has
// no code of its own.
package repocheck
