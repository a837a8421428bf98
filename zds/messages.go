package zds

import (
	"errors"
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// Version is the ZDS protocol version a ztunnel announces in its Hello
// (enum istio.workload.zds.Version). Unknown values decode as their number,
// as proto3 enums do.
type Version int32

const (
	// VersionNotUsed is the proto3 zero value; no ztunnel sends it.
	VersionNotUsed Version = 0
	// V1 is the only version ztunnel (1.21 and later) speaks.
	V1 Version = 1
)

// Hello is the first message a ztunnel sends on a new connection
// (istio.workload.zds.ZdsHello).
type Hello struct {
	Version Version // field 1
}

// WorkloadInfo names the pod behind a workload (istio.workload.zds.WorkloadInfo).
// Field 4 (trust_domain) is reserved: older agents may still send it, and it
// is skipped like any unknown field.
type WorkloadInfo struct {
	Name           string // field 1
	Namespace      string // field 2
	ServiceAccount string // field 3
}

// AddWorkload tells ztunnel to run the pod's proxy inside the network
// namespace sent with it as SCM_RIGHTS (istio.workload.zds.AddWorkload).
// WorkloadInfo is a pointer because proto3 keeps the presence of message
// fields: nil is "absent", a zero WorkloadInfo is "present and empty".
type AddWorkload struct {
	UID          string        // field 1
	WorkloadInfo *WorkloadInfo // field 2
}

// KeepWorkload asks ztunnel to keep a workload it already has; the agent sends
// it during a snapshot when it cannot open the pod's network namespace
// (istio.workload.zds.KeepWorkload).
type KeepWorkload struct {
	UID string // field 1
}

// DelWorkload tells ztunnel a pod is gone (istio.workload.zds.DelWorkload).
// Its uid is field 2, not 1: the number is the contract.
type DelWorkload struct {
	UID string // field 2
}

// SnapshotSent ends a snapshot: ztunnel drops every workload it was not
// sent (by add or keep) since the connection began.
type SnapshotSent struct{}

// Ack answers every request; an empty Error is success.
type Ack struct {
	Error string // field 1
}

// Request is one message from the agent to ztunnel
// (istio.workload.zds.WorkloadRequest): exactly one field is set on a valid
// request. Unmarshal keeps protobuf's oneof rule (the last payload on the
// wire wins) and Marshal refuses a Request with more than one.
type Request struct {
	Add          *AddWorkload  // field 1
	Keep         *KeepWorkload // field 5
	Del          *DelWorkload  // field 2
	SnapshotSent *SnapshotSent // field 3
}

// Response is one message from ztunnel to the agent
// (istio.workload.zds.WorkloadResponse).
type Response struct {
	Ack *Ack // field 1
}

// Field numbers of the wire contract (zds.proto).
const (
	fieldHelloVersion = 1

	fieldInfoName           = 1
	fieldInfoNamespace      = 2
	fieldInfoServiceAccount = 3

	fieldAddUID  = 1
	fieldAddInfo = 2
	fieldKeepUID = 1
	fieldDelUID  = 2
	fieldAckErr  = 1

	fieldRequestAdd          = 1
	fieldRequestDel          = 2
	fieldRequestSnapshotSent = 3
	fieldRequestKeep         = 5

	fieldResponseAck = 1
)

// Kind names the payload of r ("add", "keep", "del", "snapshot_sent"), or
// "empty" when none is set and "invalid" when more than one is.
func (r Request) Kind() string {
	n, kind := 0, "empty"
	if r.Add != nil {
		n, kind = n+1, "add"
	}
	if r.Keep != nil {
		n, kind = n+1, "keep"
	}
	if r.Del != nil {
		n, kind = n+1, "del"
	}
	if r.SnapshotSent != nil {
		n, kind = n+1, "snapshot_sent"
	}
	if n > 1 {
		return "invalid"
	}
	return kind
}

// Marshal encodes h as istio.workload.zds.ZdsHello.
func (h Hello) Marshal() ([]byte, error) {
	var b []byte
	if h.Version != 0 {
		b = protowire.AppendTag(b, fieldHelloVersion, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(int64(h.Version)))
	}
	return b, nil
}

// Unmarshal decodes b as istio.workload.zds.ZdsHello into h, replacing its
// contents. Unknown fields are skipped.
func (h *Hello) Unmarshal(b []byte) error {
	*h = Hello{}
	return decode(b, "ZdsHello", func(num protowire.Number, typ protowire.Type, b []byte) (int, error) {
		if num != fieldHelloVersion || typ != protowire.VarintType {
			return -1, nil
		}
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return 0, fmt.Errorf("field version: %w", protowire.ParseError(n))
		}
		// proto3 enums are int32 on the wire: truncate as protobuf does.
		h.Version = Version(int32(v))
		return n, nil
	})
}

// Marshal encodes r as istio.workload.zds.WorkloadRequest. It fails when
// more than one payload is set or a string is not valid UTF-8 (proto3
// strings must be, and ztunnel's decoder refuses them).
func (r Request) Marshal() ([]byte, error) {
	if r.Kind() == "invalid" {
		return nil, errors.New("encode WorkloadRequest: more than one payload set (it is a oneof)")
	}
	var b []byte
	var err error
	switch {
	case r.Add != nil:
		var sub []byte
		if sub, err = r.Add.marshal(); err == nil {
			b = appendMessage(b, fieldRequestAdd, sub)
		}
	case r.Del != nil:
		var sub []byte
		if sub, err = appendString(nil, fieldDelUID, r.Del.UID); err == nil {
			b = appendMessage(b, fieldRequestDel, sub)
		}
	case r.SnapshotSent != nil:
		b = appendMessage(b, fieldRequestSnapshotSent, nil)
	case r.Keep != nil:
		var sub []byte
		if sub, err = appendString(nil, fieldKeepUID, r.Keep.UID); err == nil {
			b = appendMessage(b, fieldRequestKeep, sub)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("encode WorkloadRequest (%s): %w", r.Kind(), err)
	}
	return b, nil
}

func (a *AddWorkload) marshal() ([]byte, error) {
	b, err := appendString(nil, fieldAddUID, a.UID)
	if err != nil || a.WorkloadInfo == nil {
		return b, err
	}
	var sub []byte
	for _, f := range []struct {
		num protowire.Number
		s   string
	}{
		{fieldInfoName, a.WorkloadInfo.Name},
		{fieldInfoNamespace, a.WorkloadInfo.Namespace},
		{fieldInfoServiceAccount, a.WorkloadInfo.ServiceAccount},
	} {
		if sub, err = appendString(sub, f.num, f.s); err != nil {
			return nil, fmt.Errorf("workload_info: %w", err)
		}
	}
	return appendMessage(b, fieldAddInfo, sub), nil
}

// Unmarshal decodes b as istio.workload.zds.WorkloadRequest into r,
// replacing its contents. Unknown fields are skipped; when several payloads
// are on the wire the last one wins, and a payload repeated merges, as
// protobuf decoders do.
func (r *Request) Unmarshal(b []byte) error {
	*r = Request{}
	return decode(b, "WorkloadRequest", func(num protowire.Number, typ protowire.Type, b []byte) (int, error) {
		if typ != protowire.BytesType {
			return -1, nil
		}
		var name string
		var merge func([]byte) error
		switch num {
		case fieldRequestAdd:
			if r.Add == nil {
				*r = Request{Add: &AddWorkload{}}
			}
			name, merge = "add", r.Add.merge
		case fieldRequestKeep:
			if r.Keep == nil {
				*r = Request{Keep: &KeepWorkload{}}
			}
			k := r.Keep
			name, merge = "keep", func(b []byte) error {
				return decodeStringField(b, "KeepWorkload", fieldKeepUID, "uid", &k.UID)
			}
		case fieldRequestDel:
			if r.Del == nil {
				*r = Request{Del: &DelWorkload{}}
			}
			d := r.Del
			name, merge = "del", func(b []byte) error {
				return decodeStringField(b, "DelWorkload", fieldDelUID, "uid", &d.UID)
			}
		case fieldRequestSnapshotSent:
			if r.SnapshotSent == nil {
				*r = Request{SnapshotSent: &SnapshotSent{}}
			}
			name, merge = "snapshot_sent", func(b []byte) error {
				return decode(b, "SnapshotSent", func(protowire.Number, protowire.Type, []byte) (int, error) { return -1, nil })
			}
		default:
			return -1, nil
		}
		return consumeMessage(b, name, merge)
	})
}

func (a *AddWorkload) merge(b []byte) error {
	return decode(b, "AddWorkload", func(num protowire.Number, typ protowire.Type, b []byte) (int, error) {
		switch {
		case num == fieldAddUID && typ == protowire.BytesType:
			return consumeString(b, "uid", &a.UID)
		case num == fieldAddInfo && typ == protowire.BytesType:
			if a.WorkloadInfo == nil {
				a.WorkloadInfo = &WorkloadInfo{}
			}
			return consumeMessage(b, "workload_info", a.WorkloadInfo.merge)
		}
		return -1, nil
	})
}

func (w *WorkloadInfo) merge(b []byte) error {
	return decode(b, "WorkloadInfo", func(num protowire.Number, typ protowire.Type, b []byte) (int, error) {
		if typ != protowire.BytesType {
			return -1, nil
		}
		switch num {
		case fieldInfoName:
			return consumeString(b, "name", &w.Name)
		case fieldInfoNamespace:
			return consumeString(b, "namespace", &w.Namespace)
		case fieldInfoServiceAccount:
			return consumeString(b, "service_account", &w.ServiceAccount)
		}
		return -1, nil
	})
}

// Marshal encodes r as istio.workload.zds.WorkloadResponse.
func (r Response) Marshal() ([]byte, error) {
	if r.Ack == nil {
		return nil, nil
	}
	sub, err := appendString(nil, fieldAckErr, r.Ack.Error)
	if err != nil {
		return nil, fmt.Errorf("encode WorkloadResponse (ack): %w", err)
	}
	return appendMessage(nil, fieldResponseAck, sub), nil
}

// Unmarshal decodes b as istio.workload.zds.WorkloadResponse into r,
// replacing its contents. Unknown fields are skipped.
func (r *Response) Unmarshal(b []byte) error {
	*r = Response{}
	return decode(b, "WorkloadResponse", func(num protowire.Number, typ protowire.Type, b []byte) (int, error) {
		if num != fieldResponseAck || typ != protowire.BytesType {
			return -1, nil
		}
		if r.Ack == nil {
			r.Ack = &Ack{}
		}
		a := r.Ack
		return consumeMessage(b, "ack", func(b []byte) error {
			return decodeStringField(b, "Ack", fieldAckErr, "error", &a.Error)
		})
	})
}

// decode walks the fields of one message. field handles a field it knows
// and returns the bytes it consumed, or -1 for a field it does not know
// (or knows with another wire type, which protobuf treats as unknown), which
// decode skips: newer ztunnels and agents may add fields.
func decode(b []byte, msg string, field func(protowire.Number, protowire.Type, []byte) (int, error)) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("decode %s: tag: %w", msg, protowire.ParseError(n))
		}
		if !num.IsValid() {
			return fmt.Errorf("decode %s: tag: field number %d out of range", msg, num)
		}
		b = b[n:]
		m, err := field(num, typ, b)
		if err != nil {
			return fmt.Errorf("decode %s: %w", msg, err)
		}
		if m < 0 {
			if m = protowire.ConsumeFieldValue(num, typ, b); m < 0 {
				return fmt.Errorf("decode %s: unknown field %d: %w", msg, num, protowire.ParseError(m))
			}
		}
		b = b[m:]
	}
	return nil
}

// decodeStringField decodes a message whose only known field is one string.
func decodeStringField(b []byte, msg string, num protowire.Number, name string, s *string) error {
	return decode(b, msg, func(n protowire.Number, typ protowire.Type, b []byte) (int, error) {
		if n != num || typ != protowire.BytesType {
			return -1, nil
		}
		return consumeString(b, name, s)
	})
}

func consumeString(b []byte, name string, s *string) (int, error) {
	v, n := protowire.ConsumeBytes(b)
	if n < 0 {
		return 0, fmt.Errorf("field %s: %w", name, protowire.ParseError(n))
	}
	if !utf8.Valid(v) {
		return 0, fmt.Errorf("field %s: string is not valid UTF-8", name)
	}
	*s = string(v)
	return n, nil
}

func consumeMessage(b []byte, name string, merge func([]byte) error) (int, error) {
	v, n := protowire.ConsumeBytes(b)
	if n < 0 {
		return 0, fmt.Errorf("field %s: %w", name, protowire.ParseError(n))
	}
	if err := merge(v); err != nil {
		return 0, fmt.Errorf("field %s: %w", name, err)
	}
	return n, nil
}

// appendString appends a proto3 string field, omitted when empty as proto3
// encoders do.
func appendString(b []byte, num protowire.Number, s string) ([]byte, error) {
	if s == "" {
		return b, nil
	}
	if !utf8.ValidString(s) {
		return nil, fmt.Errorf("field %d: string %q is not valid UTF-8", num, s)
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s), nil
}

// appendMessage appends a message field; a set message field is encoded
// even when empty (SnapshotSent, a success Ack).
func appendMessage(b []byte, num protowire.Number, sub []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, sub)
}
