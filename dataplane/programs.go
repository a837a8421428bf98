package dataplane

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	mrasm "github.com/meshredirect/meshredirect/asm"
)

// License is the licence the programs are loaded with.
const License = mrasm.License

// ProgramDirection returns the hook program is meant for, or an error that
// names the programs when there is none of that name.
func ProgramDirection(program string) (Direction, error) {
	p, err := mrasm.LookupProgram(program)
	if err != nil {
		return "", err
	}
	return Direction(p.Direction), nil
}

// ProgramInfo is one generated program as the kernel verified it: what
// `meshredirect dump` shows.
type ProgramInfo struct {
	Name         string `json:"name"`
	Instructions int    `json:"instructions"`
	// VerifiedInstructions is what the verifier walked; 0 on kernels
	// before 5.16, which do not report it.
	VerifiedInstructions uint32 `json:"verified_instructions"`
	// Attach says where the program goes.
	Attach string `json:"attach"`
	// Listing is the disassembly.
	Listing string `json:"-"`
}

// DescribePrograms generates the programs for this kernel, with
// bpf_redirect_peer on or off as redirectPeer says (nil: where the kernel
// has it), loads them with maps of their own (nothing pinned or attached)
// and describes each, in the order the programs are numbered. It returns
// whether the programs use bpf_redirect_peer.
func DescribePrograms(redirectPeer *bool) (bool, []ProgramInfo, error) {
	var opts mrasm.Options
	if redirectPeer == nil {
		var err error
		if opts, err = mrasm.Detect(); err != nil {
			return false, nil, err
		}
	} else {
		opts = mrasm.DefaultOptions()
		opts.RedirectPeer = *redirectPeer
	}
	if err := liftMemlock(); err != nil {
		return false, nil, fmt.Errorf("lift RLIMIT_MEMLOCK (kernel before 5.11): %w", err)
	}
	spec := mrasm.CollectionSpec(opts)
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return false, nil, fmt.Errorf("load programs: %-20v", ve)
		}
		return false, nil, fmt.Errorf("load programs: %w (run as root, or with CAP_BPF and CAP_NET_ADMIN)", err)
	}
	defer coll.Close()

	var out []ProgramInfo
	for _, p := range mrasm.Programs() {
		info, err := coll.Programs[p.Name].Info()
		if err != nil {
			return false, nil, fmt.Errorf("read program info of %s: %w", p.Name, err)
		}
		// Kernels before 5.16 do not report it: 0 then.
		verified, _ := info.VerifiedInstructions()
		out = append(out, ProgramInfo{
			Name:                 p.Name,
			Instructions:         len(spec.Programs[p.Name].Instructions),
			VerifiedInstructions: verified,
			Attach:               p.Attach,
			Listing:              fmt.Sprint(p.Instructions(opts)),
		})
	}
	return opts.RedirectPeer, out, nil
}
