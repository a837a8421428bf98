// Package cnichain runs a real CNI chain for pods of a node in a box: the
// reference ptp or bridge plugin (host-local IPAM) of
// containernetworking/plugins, built from the Go module proxy by `make
// cni-bins`, followed by meshredirect-cni. The plugins run as the kubelet
// would run them, as processes in the node's network namespace.
package cnichain
