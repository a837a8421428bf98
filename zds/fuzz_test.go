package zds

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
)

// FuzzRequest: decoding never panics; what decodes re-encodes, and decodes
// again to the same value; and the protobuf library, given the same bytes,
// decodes the same request. The seed corpus is in testdata/fuzz/FuzzRequest.
func FuzzRequest(f *testing.F) {
	fd := mustFile(f)
	for _, r := range []Request{
		{Add: &AddWorkload{UID: "u1", WorkloadInfo: &WorkloadInfo{Name: "web-0", Namespace: "default", ServiceAccount: "web"}}},
		{Keep: &KeepWorkload{UID: "u2"}},
		{Del: &DelWorkload{UID: "u3"}},
		{SnapshotSent: &SnapshotSent{}},
	} {
		b, err := r.Marshal()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Request
		if err := r.Unmarshal(b); err != nil {
			return
		}
		enc, err := r.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a decoded request %+v: %v", r, err)
		}
		var again Request
		if err := again.Unmarshal(enc); err != nil {
			t.Fatalf("Unmarshal of our own encoding %x: %v", enc, err)
		}
		if diff := cmp.Diff(r, again); diff != "" {
			t.Fatalf("decode → encode → decode changed the request (-first +second):\n%s", diff)
		}
		lib := newDynamic(fd, "WorkloadRequest")
		if err := (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, lib); err != nil {
			t.Fatalf("package zds decodes %x, the protobuf library refuses it: %v", b, err)
		}
		if want := requestToDynamic(fd, r); !proto.Equal(lib, want) {
			t.Fatalf("decodings of %x differ: protobuf %v, package zds %v", b, lib, want)
		}
	})
}

// FuzzResponse is FuzzRequest for what ztunnel sends
// (testdata/fuzz/FuzzResponse).
func FuzzResponse(f *testing.F) {
	fd := mustFile(f)
	for _, r := range []Response{{Ack: &Ack{}}, {Ack: &Ack{Error: "failed"}}} {
		b, _ := r.Marshal()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Response
		if err := r.Unmarshal(b); err != nil {
			return
		}
		enc, err := r.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a decoded response %+v: %v", r, err)
		}
		var again Response
		if err := again.Unmarshal(enc); err != nil {
			t.Fatalf("Unmarshal of our own encoding %x: %v", enc, err)
		}
		if diff := cmp.Diff(r, again); diff != "" {
			t.Fatalf("decode → encode → decode changed the response (-first +second):\n%s", diff)
		}
		lib := newDynamic(fd, "WorkloadResponse")
		if err := (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, lib); err != nil {
			t.Fatalf("package zds decodes %x, the protobuf library refuses it: %v", b, err)
		}
		if want := responseToDynamic(fd, r); !proto.Equal(lib, want) {
			t.Fatalf("decodings of %x differ: protobuf %v, package zds %v", b, lib, want)
		}
	})
}
