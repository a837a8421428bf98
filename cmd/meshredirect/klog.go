package main

import (
	"log/slog"

	"k8s.io/klog/v2"
)

// routeKlog sends what client-go logs through klog (watch errors, throttling,
// leader election, the event broadcaster) into log, the agent's handler:
// without it klog writes plain "E1206 08:15:55.123 ..." lines to stderr
// among the JSON ones, which a log pipeline parsing JSON drops or mangles.
//
// klog passes no severity but error to a logger: Info and Warning calls
// arrive as info, Error calls as error. klog.V(n) calls stay gated by klog's
// own -v, which the agent leaves at 0, so client-go's debug chatter stays
// out.
func routeKlog(log *slog.Logger) {
	klog.SetSlogLogger(log)
}
