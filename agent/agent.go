package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/zds"
)

// locator finds a pod's host interface; *dataplane.Locator is one.
type locator interface {
	Resolve(ips []netip.Addr) (dataplane.PodInterface, error)
	NetnsPath(nsid int) (string, error)
	Close() error
}

// Agent keeps the datapath of one node in step with the API.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	policy Policy
	dp     *dataplane.Dataplane
	loc    locator
	// zds hands ambient pods to ztunnel (in-pod mode only).
	zds    *zds.Server
	m      *metrics
	conf   configWriter
	events record.EventRecorder
	bcast  record.EventBroadcaster

	pods       listerscorev1.PodLister
	namespaces listerscorev1.NamespaceLister
	podsSynced cache.InformerSynced
	nsSynced   cache.InformerSynced
	podFactory informers.SharedInformerFactory
	nsFactory  informers.SharedInformerFactory
	queue      workqueue.TypedRateLimitingInterface[string]

	// work serializes the handling of queue items and CNI requests: the
	// datapath sees one change of a pod at a time.
	work sync.Mutex
	mu   sync.Mutex
	// enrolled are the pods this process enrolled (or found enrolled at its
	// first reconcile), by namespace/name.
	enrolled map[string]enrolledPod
	// decisions remember the last decision per pod, so that a skip is
	// logged once, not at every update.
	decisions map[string]string
	// tornDown are the sandboxes CNI DELs tore down, by pod namespace/name,
	// until the pod's next ADD, other IPs or its deletion (see cniDel).
	tornDown map[string]sandbox
	// added are the sandboxes CNI ADDs captured, by pod namespace/name,
	// until the pod's status shows their IPs (see cniAdd).
	added   map[string]addedSandbox
	ztunnel ztunnelState
	// nodeAddrs are the node addresses last written to the datapath.
	nodeAddrs []netip.Addr

	ready atomic.Bool
}

type enrolledPod struct {
	uid types.UID
	dp  dataplane.Pod
}

// Queue keys besides pods' namespace/name.
const (
	keyZtunnel = "\x00ztunnel"
	keyResync  = "\x00resync"
	keyNode    = "\x00node"
)

// New opens the dataplane (loading the programs, opening the pins) and
// prepares the informers. Nothing is attached or removed before Run.
func New(cfg Config) (*Agent, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	pol, err := cfg.policy()
	if err != nil {
		return nil, err
	}
	a := &Agent{
		cfg: cfg, log: cfg.Log, policy: pol,
		conf:      configWriter{path: cfg.ConfigFile, log: cfg.Log},
		enrolled:  map[string]enrolledPod{},
		decisions: map[string]string{},
		tornDown:  map[string]sandbox{},
		added:     map[string]addedSandbox{},
	}
	if a.loc, err = dataplane.NewLocator(cfg.Resolve); err != nil {
		return nil, fmt.Errorf("open the pod resolver: %w", err)
	}
	if a.dp, err = dataplane.Open(cfg.Dataplane); err != nil {
		a.loc.Close()
		return nil, err
	}

	if a.inPod() {
		a.zds, err = zds.Listen(zds.ServerOptions{Path: cfg.ZDSSocket, AckTimeout: zdsAckTimeout, Logger: cfg.Log})
		if err != nil {
			a.dp.Close()
			a.loc.Close()
			return nil, fmt.Errorf("listen for ztunnel: %w", err)
		}
	}
	var zdsStats func() zds.Stats
	if a.zds != nil {
		zdsStats = a.zds.Stats
	}
	a.m = registerMetrics(cfg.Metrics, a.dp.Stats, zdsStats)

	a.bcast = record.NewBroadcaster()
	a.events = a.bcast.NewRecorder(scheme(), corev1.EventSource{Component: "meshredirect", Host: cfg.NodeName})

	a.podFactory = informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "spec.nodeName=" + cfg.NodeName }))
	a.nsFactory = informers.NewSharedInformerFactory(cfg.Client, 0)
	podInf := a.podFactory.Core().V1().Pods()
	nsInf := a.nsFactory.Core().V1().Namespaces()
	a.pods, a.podsSynced = podInf.Lister(), podInf.Informer().HasSynced
	a.namespaces, a.nsSynced = nsInf.Lister(), nsInf.Informer().HasSynced

	a.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedMaxOfRateLimiter(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](200*time.Millisecond, 30*time.Second),
			&workqueue.TypedBucketRateLimiter[string]{Limiter: newLimiter()},
		),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "meshredirect"})

	podInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { a.podChanged(obj) },
		UpdateFunc: a.podUpdated,
		DeleteFunc: func(obj any) { a.podChanged(obj) },
	})
	nsInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { a.namespaceChanged(obj) },
		UpdateFunc: func(old, obj any) {
			if old.(*corev1.Namespace).Labels[DataplaneModeLabel] != obj.(*corev1.Namespace).Labels[DataplaneModeLabel] {
				a.namespaceChanged(obj)
			}
		},
		DeleteFunc: func(obj any) { a.namespaceChanged(obj) },
	})
	return a, nil
}

// Ready reports whether the caches have synced and the first reconcile is
// done.
func (a *Agent) Ready() bool { return a.ready.Load() }

// Run watches the API and keeps the datapath in step until ctx ends. On
// return the datapath's file descriptors are closed but capture stays in
// place: an agent that stops (an upgrade, a crash) must not unprotect the
// pods; `meshredirect uninstall` removes everything.
func (a *Agent) Run(ctx context.Context) error {
	defer a.close()
	a.bcast.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: a.cfg.Client.CoreV1().Events("")})
	defer a.bcast.Shutdown()

	if a.cfg.CNI.Socket != "" {
		// Run returns only once the CNI server has finished its requests and
		// removed its socket: a request still running would use the maps
		// that a.close closes.
		cniDone := make(chan struct{})
		defer func() { <-cniDone }()
		go func() {
			defer close(cniDone)
			if err := a.ServeCNI(ctx, a.cfg.CNI.Socket); err != nil {
				a.log.Error("serve the CNI plugin", "socket", a.cfg.CNI.Socket, "error", err)
			}
		}()
	}
	a.podFactory.Start(ctx.Done())
	a.nsFactory.Start(ctx.Done())
	a.log.Info("waiting for the informer caches", "node", a.cfg.NodeName)
	if !cache.WaitForCacheSync(ctx.Done(), a.podsSynced, a.nsSynced) {
		return fmt.Errorf("informer caches did not sync: %w", ctx.Err())
	}

	// The node's addresses change as CNIs put gateways on bridges and host
	// veths, and its tunnels come and go with its links: each change is
	// looked at, besides every resync.
	if err := a.dp.WatchNode(ctx, func() { a.queue.Add(keyNode) }); err != nil {
		a.log.Warn("cannot watch the node's addresses and links; they are read at every resync only", "error", err)
	}

	a.work.Lock()
	if err := a.dp.SetResolvers(a.cfg.DNSResolvers); err != nil {
		a.log.Error("set the DNS resolvers", "error", err)
	}
	p, err := a.plan()
	if err == nil {
		a.prefill(p.desired)
		a.syncZtunnel()
		err = a.reconcilePlan(p)
	} else {
		a.syncZtunnel()
	}
	a.work.Unlock()
	if err != nil {
		// Not fatal: what failed is retried, the rest is in place.
		a.log.Error("first reconcile incomplete", "error", err)
	}
	if a.zds != nil {
		// Only now that the first reconcile has filled the set: the
		// snapshot a connecting ztunnel gets ends with snapshot_sent,
		// which makes it drop every pod the snapshot left out, listeners
		// and all (statemanager.rs reconcile). Served earlier, a
		// restarted agent handed the ztunnel that stayed connected to its
		// predecessor an empty snapshot, and every captured pod's traffic
		// was dropped until the reconcile added it back (a quarter of a
		// second of lost DNS in TestNoGapThroughAgentTransitions/inpod).
		// Meanwhile ztunnel's connection waits in the listen backlog.
		zdsDone := make(chan struct{})
		defer func() { <-zdsDone }()
		go func() {
			defer close(zdsDone)
			if err := a.zds.Serve(ctx); err != nil && ctx.Err() == nil {
				a.log.Error("serve ztunnel", "socket", a.cfg.ZDSSocket, "error", err)
			}
		}()
	}
	a.ready.Store(true)
	a.log.Info("agent ready", "node", a.cfg.NodeName, "enrolled", a.enrolledCount())
	if a.cfg.CNI.Install {
		go a.keepCNIInstalled(ctx)
	}

	if a.zds != nil {
		go a.onZtunnelConnect(ctx)
	}
	go func() {
		t := time.NewTicker(a.cfg.ResyncPeriod)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				a.queue.Add(keyResync)
			}
		}
	}()
	go func() {
		<-ctx.Done()
		a.queue.ShutDown()
	}()
	for a.processNext() {
	}
	a.log.Info("agent stopped; capture stays in place")
	return nil
}

// onZtunnelConnect resyncs the node each time a ztunnel connects and acks
// its snapshot (in-pod mode): the pods captured while none was connected
// get their enrolment annotation, which records ztunnel's ack, and the
// ambient config its ztunnelReady.
func (a *Agent) onZtunnelConnect(ctx context.Context) {
	var seen uint64
	for {
		if err := a.zds.WaitConnected(ctx); err != nil {
			return
		}
		if n := a.zds.Stats().Connections; n != seen {
			seen = n
			a.queue.Add(keyZtunnel)
			a.queue.Add(keyResync)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (a *Agent) close() {
	a.podFactory.Shutdown()
	a.nsFactory.Shutdown()
	if a.zds != nil {
		a.zds.Close()
	}
	a.dp.Close()
	a.loc.Close()
}

func (a *Agent) processNext() bool {
	key, quit := a.queue.Get()
	if quit {
		return false
	}
	defer a.queue.Done(key)
	a.work.Lock()
	defer a.work.Unlock()
	var err error
	switch key {
	case keyZtunnel:
		a.syncZtunnel()
	case keyResync:
		err = a.reconcileAll()
	case keyNode:
		a.updateNode()
	default:
		err = a.syncPod(key)
	}
	if err != nil {
		a.queue.AddRateLimited(key)
		return true
	}
	a.queue.Forget(key)
	return true
}

// podUpdated queues an updated pod, unless the update only wrote the
// enrolment annotation onto a pod this process has enrolled: the agent's
// own patch coming back (see enrol). Its sync would decide the same (the
// annotation only counts when it says disabled), capture it again and
// find it annotated: at 1,000 pods these syncs were half the agent's
// enrolments (1,074 of 2,141), which kept it busy for seconds after the
// last pod was enrolled (the bench's scale phase).
func (a *Agent) podUpdated(oldObj, obj any) {
	if old, ok := oldObj.(*corev1.Pod); ok {
		if pod, ok := obj.(*corev1.Pod); ok && a.onlyAnnotated(old, pod) {
			return
		}
	}
	a.podChanged(obj)
}

// onlyAnnotated tells whether pod is old with the enrolment annotation
// added, and this process has it enrolled.
func (a *Agent) onlyAnnotated(old, pod *corev1.Pod) bool {
	if _, had := old.Annotations[RedirectionAnnotation]; had || pod.Annotations[RedirectionAnnotation] != RedirectionEnabled {
		return false
	}
	a.mu.Lock()
	e, enrolled := a.enrolled[pod.Namespace+"/"+pod.Name]
	a.mu.Unlock()
	if !enrolled || e.uid != pod.UID {
		return false
	}
	// Shallow copies: the informer's objects are shared.
	o, p := *old, *pod
	o.ResourceVersion, p.ResourceVersion = "", ""
	o.ManagedFields, p.ManagedFields = nil, nil
	p.Annotations = maps.Clone(p.Annotations)
	delete(p.Annotations, RedirectionAnnotation)
	return equality.Semantic.DeepEqual(&o, &p)
}

func (a *Agent) podChanged(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	if a.policy.Ztunnel.Matches(labels.Set(pod.Labels)) {
		a.queue.Add(keyZtunnel)
	}
	a.queue.Add(pod.Namespace + "/" + pod.Name)
}

func (a *Agent) namespaceChanged(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return
	}
	pods, err := a.pods.Pods(ns.Name).List(labels.Everything())
	if err != nil {
		return
	}
	for _, p := range pods {
		a.queue.Add(p.Namespace + "/" + p.Name)
	}
}

func (a *Agent) enrolledCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.enrolled)
}

// podIPs returns all of a pod's IPs (status.podIPs, else status.podIP).
func podIPs(pod *corev1.Pod) []netip.Addr {
	var ips []netip.Addr
	for _, p := range pod.Status.PodIPs {
		if ip, err := netip.ParseAddr(p.IP); err == nil {
			ips = append(ips, ip.Unmap())
		}
	}
	if len(ips) == 0 && pod.Status.PodIP != "" {
		if ip, err := netip.ParseAddr(pod.Status.PodIP); err == nil {
			ips = append(ips, ip.Unmap())
		}
	}
	return ips
}

// isNotFound tells "the pod's interface is not there (yet)" from other
// resolver failures.
func isNotFound(err error) bool { return errors.Is(err, dataplane.ErrPodNotFound) }
