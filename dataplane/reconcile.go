package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/tc"
)

// ReconcileResult says what Reconcile changed.
type ReconcileResult struct {
	// Enrolled are the pods that were enrolled or repaired.
	Enrolled []string
	// Unchanged counts the desired pods that were already in place.
	Unchanged int
	// Detached are the stale attachments removed.
	Detached []tc.Attachment
	// Deleted are the addresses of stale pod entries removed.
	Deleted []netip.Addr
	// Failed are the pods that could not be enrolled, with why; the others
	// were still reconciled.
	Failed map[string]error
}

// Reconcile makes the node's datapath match desired, the complete set of
// ambient pods of this node: pods missing their map entries or programs are
// enrolled (and programs loaded by an earlier process replaced by this
// one's, atomically), and what belongs to no desired pod is removed: app
// programs on other interfaces, pod entries of other IPs in the endpoints
// map, tcx links of vanished interfaces. A pod that fails does not stop the others; the
// error lists every failure.
//
// keep are IPs of pods that should be captured but cannot be reconciled now
// (their interface is not found yet): their map entries, and the programs
// on the interfaces those entries name, stay as they are.
func (d *Dataplane) Reconcile(desired []Pod, keep []netip.Addr) (ReconcileResult, error) {
	d.mu.Lock()
	defer d.mu.Unlock()

	res := ReconcileResult{Failed: map[string]error{}}
	attachments, err := d.node.ListAll()
	if err != nil {
		return res, fmt.Errorf("reconcile: %w", err)
	}
	entries, err := d.maps.Endpoints.Pods()
	if err != nil {
		return res, fmt.Errorf("reconcile: %w", err)
	}

	wantIfindex := map[int]bool{}
	wantIP := map[netip.Addr]bool{}
	for _, p := range desired {
		if !d.inPlace(p, attachments, entries) {
			if err := d.enroll(p); err != nil {
				res.Failed[p.String()] = err
				continue
			}
			res.Enrolled = append(res.Enrolled, p.String())
		} else {
			res.Unchanged++
		}
		wantIfindex[p.HostIfindex] = true
		for _, ip := range p.IPs {
			wantIP[ip] = true
		}
	}

	for _, ip := range keep {
		wantIP[ip] = true
		if e, ok := entries[ip]; ok {
			wantIfindex[int(e.Ifindex)] = true
		}
	}

	var errs []error
	zt, _ := d.maps.Ztunnel.Get()
	for _, a := range attachments {
		stale := false
		switch programOf(a) {
		case mrasm.AppOutbound, mrasm.AppInbound:
			stale = !wantIfindex[a.Ifindex]
		case mrasm.ZtunnelIngress, mrasm.ZtunnelEgress:
			stale = a.Ifindex != int(zt.Ifindex)
		}
		if !stale || a.Defunct {
			continue
		}
		if err := d.node.Detach(a.Ifindex, a.Direction); err != nil {
			errs = append(errs, err)
			continue
		}
		res.Detached = append(res.Detached, a)
	}
	errs = append(errs, d.clearUnwanted(entries, wantIP, &res)...)
	pruned, err := d.node.Prune()
	if err != nil {
		errs = append(errs, err)
	}
	res.Detached = append(res.Detached, pruned...)

	for name, err := range res.Failed {
		errs = append(errs, fmt.Errorf("%s: %w", name, err))
	}
	if len(res.Enrolled)+len(res.Detached)+len(res.Deleted)+len(res.Failed) > 0 {
		d.log.Info("reconciled", "enrolled", len(res.Enrolled), "unchanged", res.Unchanged,
			"detached", len(res.Detached), "deleted_entries", len(res.Deleted), "failed", len(res.Failed))
	}
	if len(errs) > 0 {
		return res, fmt.Errorf("reconcile: %w", errors.Join(errs...))
	}
	return res, nil
}

// inPlace reports whether p has all its map entries, with its policy, and
// both app programs of this process on its veth.
func (d *Dataplane) inPlace(p Pod, attachments []tc.Attachment, entries map[netip.Addr]maps.Endpoint) bool {
	for _, ip := range p.IPs {
		e, ok := entries[ip]
		if !ok || int(e.Ifindex) != p.HostIfindex || e.Flags&podFlags != p.Policy.flags() {
			return false
		}
	}
	for _, ap := range appPrograms {
		if !slices.ContainsFunc(attachments, func(a tc.Attachment) bool {
			return a.Ifindex == p.HostIfindex && a.Direction == ap.dir && a.ProgramID == d.progIDs[ap.name] && a.Mode == d.node.Mode()
		}) {
			return false
		}
	}
	return true
}

// programOf names the program of an attachment: the filter's name, or the
// kernel's name of a tcx link's program.
func programOf(a tc.Attachment) string {
	if a.Name != "" {
		return a.Name
	}
	return a.ProgramName
}

// clearUnwanted removes the pod entries of entries whose address want does
// not hold, recording each in res.Deleted.
func (d *Dataplane) clearUnwanted(entries map[netip.Addr]maps.Endpoint, want map[netip.Addr]bool, res *ReconcileResult) []error {
	var errs []error
	for ip := range entries {
		if want[ip] {
			continue
		}
		if err := d.clearPod(ip); err != nil {
			errs = append(errs, err)
			continue
		}
		res.Deleted = append(res.Deleted, ip)
	}
	return errs
}
