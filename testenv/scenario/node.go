package scenario

// SyncNode writes what the datapath must know of the box's node, as the
// agent does when the node changes: its own addresses and its tunnel ports.
// Call it again after changing the node (a new tunnel device, a pod whose
// CNI put a gateway address on the node).
func (b *Box) SyncNode() error {
	addrs, err := b.DP.NodeAddresses()
	if err != nil {
		return err
	}
	if err := b.DP.SetNodeAddresses(addrs); err != nil {
		return err
	}
	ports, err := b.DP.RelayPorts()
	if err != nil {
		return err
	}
	return b.DP.SetRelayPorts(ports)
}
