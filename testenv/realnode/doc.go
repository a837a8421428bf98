// Package realnode runs a real single-node Kubernetes cluster for tests: etcd and kube-apiserver
// (package kubeapi), kube-controller-manager, kube-scheduler and a kubelet built from the Go module
// proxy (make kube-bins), with Debian's containerd and runc, the reference CNI plugins as the
// primary CNI, and the project's images (agent, ztunnel stand-in, test application, pause) built
// from this checkout and imported into containerd. Tests install the chart on it as a user
// would and watch the kubelet run the agent, ztunnel's stand-in and application pods.
//
// The node lives in a network and mount namespace of its own ([Main] re-executes the test
// binary there), with private tmpfs mounts over the directories a node writes and a bpffs of its
// own, so that it never touches the machine's interfaces, mounts or pins. [Start] brings a node
// up and tears it down at the end of the test, also when it fails.
//
// The picture, for the ptp CNI:
//
//	node netns (the test binary, the control plane, containerd, the kubelet, the agent's pod)
//	  node0 198.18.250.1/24 fd6e:6f64:65::1/64 <-> node1 (the default route's gateway)
//	  lo: kube-apiserver on 127.0.0.1; nft DNAT 10.96.0.1:443 -> it (the kubernetes Service)
//	  veth<rand> 198.19.100.1/32 -- pod netns: eth0 198.19.100.N/24, fd6e:6f64:65:100::N/64
//	                                (ztunnel's stand-in, ambient and plain test pods)
package realnode
