package ztunnel

import (
	"context"
	"fmt"
	"os"

	"github.com/meshredirect/meshredirect/zds"
)

// dialZDS connects with package zds's Client, which says hello (V1).
func dialZDS(ctx context.Context, path string) (zdsConn, error) {
	c, err := zds.Dial(ctx, path)
	if err != nil {
		return nil, err
	}
	return zdsClient{c}, nil
}

// zdsClient turns zds.Client's requests into the stand-in's ZDSRequest.
type zdsClient struct{ *zds.Client }

func (c zdsClient) Recv() (ZDSRequest, *os.File, error) {
	r, ns, err := c.Client.Recv()
	if err != nil {
		return ZDSRequest{}, nil, err
	}
	req := ZDSRequest{Op: r.Kind()}
	switch {
	case r.Add != nil:
		req.Pod.UID = r.Add.UID
		if i := r.Add.WorkloadInfo; i != nil {
			req.Pod.Name, req.Pod.Namespace, req.Pod.ServiceAccount = i.Name, i.Namespace, i.ServiceAccount
		}
	case r.Keep != nil:
		req.Pod.UID = r.Keep.UID
	case r.Del != nil:
		req.Pod.UID = r.Del.UID
	case r.SnapshotSent != nil:
	default:
		if ns != nil {
			ns.Close()
		}
		return req, nil, fmt.Errorf("zds request of kind %s", r.Kind())
	}
	return req, ns, nil
}
