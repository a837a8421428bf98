package zds_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/meshredirect/meshredirect/zds"
)

// The agent serves ZDS and adds a pod; a ztunnel (here the Client, as the
// test environment's stand-in uses it) connects, takes the snapshot and the
// add, and acks each.
func Example() {
	dir, _ := os.MkdirTemp("", "zds-example")
	defer os.RemoveAll(dir)
	ctx := context.Background()

	srv, err := zds.Listen(zds.ServerOptions{Path: filepath.Join(dir, "ztunnel.sock")})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Close()
	go srv.Serve(ctx)

	// ztunnel's side: hello, then answer every request.
	ztunnel, err := zds.Dial(ctx, srv.Path())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ztunnel.Close()
	go func() {
		for {
			req, netns, err := ztunnel.Recv()
			if err != nil {
				return
			}
			if netns != nil {
				netns.Close() // ztunnel would run the pod's listeners in it
			}
			fmt.Println("ztunnel received", req.Kind())
			ztunnel.Ack("")
		}
	}()

	if err := srv.WaitConnected(ctx); err != nil {
		fmt.Println(err)
		return
	}
	err = srv.Add(ctx, zds.Workload{
		UID:   "0f6b6a53-2e4c-4b8e-9d4a-0d3f3e7c1a11",
		Info:  zds.WorkloadInfo{Name: "web-0", Namespace: "default", ServiceAccount: "web"},
		Netns: "/proc/self/ns/net",
	})
	fmt.Println("add:", err)
	acked, _ := srv.Acked("0f6b6a53-2e4c-4b8e-9d4a-0d3f3e7c1a11")
	fmt.Println("acked:", acked)
	// Output:
	// ztunnel received snapshot_sent
	// ztunnel received add
	// add: <nil>
	// acked: true
}
