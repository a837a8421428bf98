package zds

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// zdsDescriptor is zds.proto written as a descriptor, so that the protobuf
// library can encode and decode the same messages without generated code.
func zdsDescriptor() *descriptorpb.FileDescriptorProto {
	str := func(name string, num int32) *descriptorpb.FieldDescriptorProto {
		return &descriptorpb.FieldDescriptorProto{
			Name: proto.String(name), Number: proto.Int32(num), JsonName: proto.String(name),
			Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(),
			Type:  descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(),
		}
	}
	msg := func(name string, num int32, typ string, oneof bool) *descriptorpb.FieldDescriptorProto {
		f := &descriptorpb.FieldDescriptorProto{
			Name: proto.String(name), Number: proto.Int32(num), JsonName: proto.String(name),
			Label:    descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(),
			Type:     descriptorpb.FieldDescriptorProto_TYPE_MESSAGE.Enum(),
			TypeName: proto.String(".istio.workload.zds." + typ),
		}
		if oneof {
			f.OneofIndex = proto.Int32(0)
		}
		return f
	}
	payload := []*descriptorpb.OneofDescriptorProto{{Name: proto.String("payload")}}
	return &descriptorpb.FileDescriptorProto{
		Name:    proto.String("zds.proto"),
		Package: proto.String("istio.workload.zds"),
		Syntax:  proto.String("proto3"),
		EnumType: []*descriptorpb.EnumDescriptorProto{{
			Name: proto.String("Version"),
			Value: []*descriptorpb.EnumValueDescriptorProto{
				{Name: proto.String("NOT_USED"), Number: proto.Int32(0)},
				{Name: proto.String("V1"), Number: proto.Int32(1)},
			},
		}},
		MessageType: []*descriptorpb.DescriptorProto{
			{Name: proto.String("ZdsHello"), Field: []*descriptorpb.FieldDescriptorProto{{
				Name: proto.String("version"), Number: proto.Int32(1), JsonName: proto.String("version"),
				Label:    descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(),
				Type:     descriptorpb.FieldDescriptorProto_TYPE_ENUM.Enum(),
				TypeName: proto.String(".istio.workload.zds.Version"),
			}}},
			{
				Name:          proto.String("WorkloadInfo"),
				Field:         []*descriptorpb.FieldDescriptorProto{str("name", 1), str("namespace", 2), str("service_account", 3)},
				ReservedRange: []*descriptorpb.DescriptorProto_ReservedRange{{Start: proto.Int32(4), End: proto.Int32(5)}},
			},
			{Name: proto.String("AddWorkload"), Field: []*descriptorpb.FieldDescriptorProto{str("uid", 1), msg("workload_info", 2, "WorkloadInfo", false)}},
			{Name: proto.String("KeepWorkload"), Field: []*descriptorpb.FieldDescriptorProto{str("uid", 1)}},
			{Name: proto.String("DelWorkload"), Field: []*descriptorpb.FieldDescriptorProto{str("uid", 2)}},
			{Name: proto.String("SnapshotSent")},
			{Name: proto.String("Ack"), Field: []*descriptorpb.FieldDescriptorProto{str("error", 1)}},
			{Name: proto.String("WorkloadRequest"), OneofDecl: payload, Field: []*descriptorpb.FieldDescriptorProto{
				msg("add", 1, "AddWorkload", true),
				msg("keep", 5, "KeepWorkload", true),
				msg("del", 2, "DelWorkload", true),
				msg("snapshot_sent", 3, "SnapshotSent", true),
			}},
			{Name: proto.String("WorkloadResponse"), OneofDecl: payload, Field: []*descriptorpb.FieldDescriptorProto{
				msg("ack", 1, "Ack", true),
			}},
		},
	}
}

func mustFile(tb testing.TB) protoreflect.FileDescriptor {
	tb.Helper()
	fd, err := protodesc.NewFile(zdsDescriptor(), nil)
	if err != nil {
		tb.Fatalf("build descriptor of zds.proto: %v", err)
	}
	return fd
}

func newDynamic(fd protoreflect.FileDescriptor, name string) *dynamicpb.Message {
	return dynamicpb.NewMessage(fd.Messages().ByName(protoreflect.Name(name)))
}

// setString sets a string field when non-empty (proto3: empty is unset).
func setString(m *dynamicpb.Message, name, v string) {
	if v != "" {
		m.Set(m.Descriptor().Fields().ByName(protoreflect.Name(name)), protoreflect.ValueOfString(v))
	}
}

func setMessage(m *dynamicpb.Message, name string, sub *dynamicpb.Message) {
	m.Set(m.Descriptor().Fields().ByName(protoreflect.Name(name)), protoreflect.ValueOfMessage(sub))
}

// requestToDynamic builds the protobuf library's view of r.
func requestToDynamic(fd protoreflect.FileDescriptor, r Request) *dynamicpb.Message {
	m := newDynamic(fd, "WorkloadRequest")
	switch {
	case r.Add != nil:
		a := newDynamic(fd, "AddWorkload")
		setString(a, "uid", r.Add.UID)
		if i := r.Add.WorkloadInfo; i != nil {
			info := newDynamic(fd, "WorkloadInfo")
			setString(info, "name", i.Name)
			setString(info, "namespace", i.Namespace)
			setString(info, "service_account", i.ServiceAccount)
			setMessage(a, "workload_info", info)
		}
		setMessage(m, "add", a)
	case r.Keep != nil:
		k := newDynamic(fd, "KeepWorkload")
		setString(k, "uid", r.Keep.UID)
		setMessage(m, "keep", k)
	case r.Del != nil:
		d := newDynamic(fd, "DelWorkload")
		setString(d, "uid", r.Del.UID)
		setMessage(m, "del", d)
	case r.SnapshotSent != nil:
		setMessage(m, "snapshot_sent", newDynamic(fd, "SnapshotSent"))
	}
	return m
}

func responseToDynamic(fd protoreflect.FileDescriptor, r Response) *dynamicpb.Message {
	m := newDynamic(fd, "WorkloadResponse")
	if r.Ack != nil {
		a := newDynamic(fd, "Ack")
		setString(a, "error", r.Ack.Error)
		setMessage(m, "ack", a)
	}
	return m
}

func helloToDynamic(fd protoreflect.FileDescriptor, h Hello) *dynamicpb.Message {
	m := newDynamic(fd, "ZdsHello")
	if h.Version != 0 {
		m.Set(m.Descriptor().Fields().ByName("version"), protoreflect.ValueOfEnum(protoreflect.EnumNumber(h.Version)))
	}
	return m
}

// TestWireMatchesProtobuf: for every message in the table, package zds and
// the protobuf library (driven by a descriptor of zds.proto) produce the same
// bytes, and each decodes what the other encoded to the same value.
func TestWireMatchesProtobuf(t *testing.T) {
	fd := mustFile(t)
	info := &WorkloadInfo{Name: "web-0", Namespace: "default", ServiceAccount: "web"}
	requests := []struct {
		name string
		r    Request
	}{
		{"add full", Request{Add: &AddWorkload{UID: "0f6b6a53-2e4c-4b8e-9d4a-0d3f3e7c1a11", WorkloadInfo: info}}},
		{"add without info", Request{Add: &AddWorkload{UID: "u1"}}},
		{"add with empty info", Request{Add: &AddWorkload{UID: "u1", WorkloadInfo: &WorkloadInfo{}}}},
		{"add partial info", Request{Add: &AddWorkload{UID: "u1", WorkloadInfo: &WorkloadInfo{Namespace: "ns"}}}},
		{"add empty", Request{Add: &AddWorkload{}}},
		{"add unicode", Request{Add: &AddWorkload{UID: "ü", WorkloadInfo: &WorkloadInfo{Name: "名前", Namespace: "ns", ServiceAccount: "sa"}}}},
		{"add long names", Request{Add: &AddWorkload{UID: strings.Repeat("u", 36), WorkloadInfo: &WorkloadInfo{Name: strings.Repeat("n", 253), Namespace: strings.Repeat("s", 63), ServiceAccount: strings.Repeat("a", 253)}}}},
		{"keep", Request{Keep: &KeepWorkload{UID: "u2"}}},
		{"keep empty", Request{Keep: &KeepWorkload{}}},
		{"del (uid is field 2)", Request{Del: &DelWorkload{UID: "u3"}}},
		{"del empty", Request{Del: &DelWorkload{}}},
		{"snapshot_sent", Request{SnapshotSent: &SnapshotSent{}}},
		{"no payload", Request{}},
	}
	for _, tc := range requests {
		t.Run("request/"+tc.name, func(t *testing.T) {
			ours, err := tc.r.Marshal()
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			lib := requestToDynamic(fd, tc.r)
			theirs, err := proto.MarshalOptions{Deterministic: true}.Marshal(lib)
			if err != nil {
				t.Fatalf("proto.Marshal: %v", err)
			}
			if !bytes.Equal(ours, theirs) {
				t.Errorf("bytes differ:\n zds   %x\n proto %x", ours, theirs)
			}
			var got Request
			if err := got.Unmarshal(theirs); err != nil {
				t.Fatalf("Unmarshal of the library's bytes: %v", err)
			}
			if diff := cmp.Diff(tc.r, got); diff != "" {
				t.Errorf("Unmarshal of the library's bytes (-want +got):\n%s", diff)
			}
			back := newDynamic(fd, "WorkloadRequest")
			if err := proto.Unmarshal(ours, back); err != nil {
				t.Fatalf("proto.Unmarshal of our bytes: %v", err)
			}
			if !proto.Equal(back, lib) {
				t.Errorf("the library decodes our bytes as %v, want %v", back, lib)
			}
		})
	}
	responses := []struct {
		name string
		r    Response
	}{
		{"ack success", Response{Ack: &Ack{}}},
		{"ack error", Response{Ack: &Ack{Error: "failed to create inpod proxy: netns gone"}}},
		{"no payload", Response{}},
	}
	for _, tc := range responses {
		t.Run("response/"+tc.name, func(t *testing.T) {
			ours, err := tc.r.Marshal()
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			lib := responseToDynamic(fd, tc.r)
			theirs, err := proto.MarshalOptions{Deterministic: true}.Marshal(lib)
			if err != nil {
				t.Fatalf("proto.Marshal: %v", err)
			}
			if !bytes.Equal(ours, theirs) {
				t.Errorf("bytes differ:\n zds   %x\n proto %x", ours, theirs)
			}
			var got Response
			if err := got.Unmarshal(theirs); err != nil {
				t.Fatalf("Unmarshal of the library's bytes: %v", err)
			}
			if diff := cmp.Diff(tc.r, got); diff != "" {
				t.Errorf("Unmarshal of the library's bytes (-want +got):\n%s", diff)
			}
			back := newDynamic(fd, "WorkloadResponse")
			if err := proto.Unmarshal(ours, back); err != nil {
				t.Fatalf("proto.Unmarshal of our bytes: %v", err)
			}
			if !proto.Equal(back, lib) {
				t.Errorf("the library decodes our bytes as %v, want %v", back, lib)
			}
		})
	}
	for _, h := range []Hello{{}, {Version: V1}, {Version: 7}, {Version: -1}} {
		t.Run(fmt.Sprintf("hello/version %d", h.Version), func(t *testing.T) {
			ours, _ := h.Marshal()
			lib := helloToDynamic(fd, h)
			theirs, err := proto.Marshal(lib)
			if err != nil {
				t.Fatalf("proto.Marshal: %v", err)
			}
			if !bytes.Equal(ours, theirs) {
				t.Errorf("bytes differ for version %d:\n zds   %x\n proto %x", h.Version, ours, theirs)
			}
			var got Hello
			if err := got.Unmarshal(theirs); err != nil || got != h {
				t.Errorf("Unmarshal of the library's bytes = %v, %v; want %v", got, err, h)
			}
			back := newDynamic(fd, "ZdsHello")
			if err := proto.Unmarshal(ours, back); err != nil || !proto.Equal(back, lib) {
				t.Errorf("the library decodes our bytes as %v (%v), want %v", back, err, lib)
			}
		})
	}
}

// TestUnmarshalSkipsUnknownFields: fields a newer ztunnel or agent may add
// (any number, any wire type, including a known number with another wire
// type, and the reserved trust_domain) are skipped, as the protobuf library
// skips them.
func TestUnmarshalSkipsUnknownFields(t *testing.T) {
	fd := mustFile(t)
	unknown := func(b []byte) []byte {
		b = protowire.AppendTag(b, 99, protowire.VarintType)
		b = protowire.AppendVarint(b, 1<<40)
		b = protowire.AppendTag(b, 100, protowire.BytesType)
		b = protowire.AppendString(b, "future")
		b = protowire.AppendTag(b, 101, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, 7)
		b = protowire.AppendTag(b, 102, protowire.Fixed64Type)
		b = protowire.AppendFixed64(b, 7)
		b = protowire.AppendTag(b, 103, protowire.StartGroupType)
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, 1)
		b = protowire.AppendTag(b, 103, protowire.EndGroupType)
		return b
	}
	msg := func(num protowire.Number, sub []byte) []byte { return appendMessage(nil, num, sub) }
	str := func(num protowire.Number, s string) []byte { b, _ := appendString(nil, num, s); return b }
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

	info := cat(str(1, "web-0"), unknown(nil), str(2, "default"), str(4, "cluster.local"), str(3, "web"))
	add := cat(unknown(nil), str(1, "u1"), msg(2, info))
	for _, tc := range []struct {
		name string
		b    []byte
		want Request
	}{
		{"add with unknown fields at every level", cat(msg(1, add), unknown(nil)),
			Request{Add: &AddWorkload{UID: "u1", WorkloadInfo: &WorkloadInfo{Name: "web-0", Namespace: "default", ServiceAccount: "web"}}}},
		{"known number with another wire type", cat(str(1, "x")[:0], protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 5), msg(2, str(2, "u3"))),
			Request{Del: &DelWorkload{UID: "u3"}}},
		{"unknown payload only", msg(9, str(1, "x")), Request{}},
		{"keep with unknown", msg(5, cat(str(1, "u2"), unknown(nil))), Request{Keep: &KeepWorkload{UID: "u2"}}},
		{"del ignores field 1", msg(2, cat(str(1, "not-the-uid"), str(2, "u3"))), Request{Del: &DelWorkload{UID: "u3"}}},
		{"last payload wins", cat(msg(1, str(1, "u1")), msg(2, str(2, "u3"))), Request{Del: &DelWorkload{UID: "u3"}}},
		{"repeated payload merges", cat(msg(1, str(1, "u1")), msg(1, msg(2, str(1, "n")))),
			Request{Add: &AddWorkload{UID: "u1", WorkloadInfo: &WorkloadInfo{Name: "n"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got Request
			if err := got.Unmarshal(tc.b); err != nil {
				t.Fatalf("Unmarshal: %v", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Unmarshal (-want +got):\n%s", diff)
			}
			lib := newDynamic(fd, "WorkloadRequest")
			if err := (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(tc.b, lib); err != nil {
				t.Fatalf("proto.Unmarshal: %v", err)
			}
			if want := requestToDynamic(fd, tc.want); !proto.Equal(lib, want) {
				t.Errorf("the library decodes %v, package zds %v", lib, want)
			}
		})
	}
}

// TestUnmarshalRejectsMalformed: truncated or invalid input is an error
// naming the message, never a panic, and the protobuf library refuses it
// too.
func TestUnmarshalRejectsMalformed(t *testing.T) {
	fd := mustFile(t)
	good, _ := Request{Add: &AddWorkload{UID: "u1", WorkloadInfo: &WorkloadInfo{Name: "web-0"}}}.Marshal()
	for _, tc := range []struct {
		name, want string
		b          []byte
	}{
		{"truncated tag", "tag", []byte{0x80}},
		{"field number 0", "tag", []byte{0x02, 0x00}},
		{"field number beyond 2^29-1 (found by FuzzRequest)", "out of range", []byte{0x80, 0x99, 0xdf, 0xee, 0x30, 0x30}},
		{"truncated length", "add", good[:1]},
		{"length beyond the end", "add", good[:len(good)-1]},
		{"invalid UTF-8 in uid", "not valid UTF-8", []byte{0x0a, 0x03, 0x0a, 0x01, 0xff}},
		{"unterminated group", "unknown field", []byte{0x9b, 0x06}},
		{"stray end group", "unknown field", []byte{0x9c, 0x06}},
		{"truncated unknown varint", "unknown field", []byte{0x98, 0x06, 0xff}},
		{"overlong varint", "unknown field", append([]byte{0x98, 0x06}, bytes.Repeat([]byte{0xff}, 11)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r Request
			err := r.Unmarshal(tc.b)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "WorkloadRequest") {
				t.Errorf("Unmarshal(%x) = %v, want an error about %q", tc.b, err, tc.want)
			}
			if err := proto.Unmarshal(tc.b, newDynamic(fd, "WorkloadRequest")); err == nil {
				t.Errorf("the protobuf library accepts %x; the case is not malformed", tc.b)
			}
		})
	}
}

func TestMarshalRefusesInvalid(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    Request
	}{
		{"two payloads", Request{Add: &AddWorkload{UID: "u"}, Del: &DelWorkload{UID: "u"}}},
		{"invalid UTF-8", Request{Add: &AddWorkload{UID: "\xff"}}},
		{"invalid UTF-8 in info", Request{Add: &AddWorkload{UID: "u", WorkloadInfo: &WorkloadInfo{Name: "\xff"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if b, err := tc.r.Marshal(); err == nil {
				t.Errorf("Marshal = %x, want an error", b)
			}
		})
	}
}

// TestProtoFileMatchesDescriptor: zds.proto, the documentation of the
// contract, declares every field the test descriptor (and so package zds)
// uses, with the same number.
func TestProtoFileMatchesDescriptor(t *testing.T) {
	text, err := os.ReadFile("zds.proto")
	if err != nil {
		t.Fatal(err)
	}
	src := string(text)
	if !strings.Contains(src, "package istio.workload.zds;") {
		t.Errorf("zds.proto does not declare package istio.workload.zds")
	}
	for _, m := range zdsDescriptor().GetMessageType() {
		block := regexp.MustCompile(`(?s)message ` + m.GetName() + ` \{(.*?)\n\}`).FindStringSubmatch(src)
		if block == nil {
			t.Errorf("zds.proto has no message %s", m.GetName())
			continue
		}
		for _, f := range m.GetField() {
			typ := strings.TrimPrefix(f.GetTypeName(), ".istio.workload.zds.")
			if typ == "" {
				typ = "string"
			}
			line := fmt.Sprintf("%s %s = %d;", typ, f.GetName(), f.GetNumber())
			if !strings.Contains(block[1], line) {
				t.Errorf("zds.proto message %s lacks %q", m.GetName(), line)
			}
		}
	}
}
