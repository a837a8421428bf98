// Command etcd is etcd's own server main, built at the version k8s.io/kubernetes
// pins (see go.mod), so tests run the etcd that kube-apiserver is released with.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
