package main

import "github.com/meshredirect/meshredirect/bench/report"

// families are the IP families every workload runs for, in the order
// they run.
var families = []string{report.FamilyIPv4, report.FamilyIPv6}

// noIPv6 says why a mode's copy cannot carry IPv6 the way the mode means
// it: its runs over IPv6 are left out and the reason recorded
// (Results.Skipped), rather than measuring traffic that the mode does not
// capture. A mode that is not listed runs over both families.
var noIPv6 = map[string]string{
	report.ModeIptablesNode: "Istio's node-level rules (istio-cni 1.18-1.20, redirectMode iptables) were IPv4 only: an ipset of IPv4 pod IPs, IPv4 tunnels and policy routes",
}

// familySkipped returns why mode does not run over family, or "".
func familySkipped(mode, family string) string {
	if family == report.FamilyIPv6 {
		return noIPv6[mode]
	}
	return ""
}
