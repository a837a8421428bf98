package dataplane

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"

	"github.com/meshredirect/meshredirect/internal/nlmsg"
)

// The fou generic netlink family (include/uapi/linux/fou.h, kernel 3.18+),
// whose receivers decapsulate UDP on a port. Hand-written: mdlayher/genetlink
// carries a family's messages but knows none, and neither x/sys nor
// jsimonetti/rtnetlink has fou's.
const (
	fouGenlName    = "fou"
	fouGenlVersion = 1
	fouCmdGet      = 3 // FOU_CMD_GET
	fouAttrPort    = 1 // FOU_ATTR_PORT: __be16
)

// fouPorts lists the ports of the FOU receivers of the netns.
func (n *nsLink) fouPorts() ([]uint16, error) {
	c, err := n.generic()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return fouPorts(c)
}

// fouPorts lists the ports of the FOU receivers of c's netns, none if the
// kernel has no fou family. The families are listed, not asked for by
// name: asked for by name, a family the kernel lacks makes it load the
// module (ctrl_getfamily's request_module). One dump covers both address
// families: fou_nl_dump lists every receiver of the netns whatever the
// request carries. Neither dump is ever flagged NLM_F_DUMP_INTR (neither
// ctrl_dumpfamily nor fou_nl_dump keeps a sequence to compare).
func fouPorts(c *genetlink.Conn) ([]uint16, error) {
	families, err := c.ListFamilies()
	if err != nil {
		return nil, fmt.Errorf("list generic netlink families: %w", err)
	}
	i := slices.IndexFunc(families, func(f genetlink.Family) bool { return f.Name == fouGenlName })
	if i < 0 {
		return nil, nil
	}
	req := genetlink.Message{Header: genetlink.Header{Command: fouCmdGet, Version: fouGenlVersion}}
	msgs, err := c.Execute(req, families[i].ID, netlink.Request|netlink.Dump)
	if err != nil {
		return nil, fmt.Errorf("list FOU receivers: %w", err)
	}
	ports := make([]uint16, 0, len(msgs))
	for _, m := range msgs {
		port, err := parseFou(m.Data)
		if err != nil {
			return nil, err
		}
		ports = append(ports, port)
	}
	return ports, nil
}

// parseFou reads the port of a FOU receiver from the attributes of a
// FOU_CMD_GET reply (fou_fill_info).
func parseFou(b []byte) (uint16, error) {
	var port uint16
	err := nlmsg.ScanAttrs(b, 0, func(ad *netlink.AttributeDecoder) {
		if ad.Type() == fouAttrPort {
			ad.ByteOrder = binary.BigEndian
			port = ad.Uint16()
			ad.ByteOrder = binary.NativeEndian
		}
	})
	if err != nil {
		return 0, fmt.Errorf("decode FOU_CMD_GET reply: %w", err)
	}
	return port, nil
}
