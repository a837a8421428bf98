// Package kubeapi runs a real kube-apiserver backed by a real etcd on loopback, for tests that
// need Kubernetes' own validation, RBAC and watch semantics rather than a fake.
//
// The binaries are built once per machine by hack/kubebins/build.sh (`make kube-bins`) into a
// cache directory outside the repository; [Binaries] finds them there. [Start] brings up a
// control plane in a temporary directory and [Server.Stop] takes it down again; [Main] and
// [Shared] give a test package one control plane for all its tests, started on first use.
//
// There is no controller-manager, scheduler or kubelet: a deleted namespace stays Terminating,
// no default ServiceAccount appears, and pod status is whatever the test writes through the
// status subresource. Give each test its own namespace.
//
// The package uses only the standard library so that importing it does not pull client-go into
// packages that do not otherwise need it; callers build their client from [Server.Host],
// [Server.CA] and a token, or from [Server.Kubeconfig].
package kubeapi
