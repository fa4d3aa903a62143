// Command fake-kubelet is the node simulator of scripts/local-cluster.sh: it does what a kubelet
// does towards the API server, without running containers, so that kubetrail's end-to-end tests
// see real kubelet traffic in the audit log (sigs.k8s.io/kwok is the alternative; this keeps the
// build to one module).
//
// It authenticates as system:node:NAME (a client certificate from the cluster's CA, group
// system:nodes, so the Node authorizer and NodeRestriction apply as to a real kubelet), uses a
// kubelet user agent, registers its Node, renews its Lease, and for every Pod bound to it:
// patches pods/status to Running and Ready (strategic merge patch, as the kubelet's status
// manager does), completes Pods that do not restart (restartPolicy Never/OnFailure) and, when a
// Pod is deleted gracefully, reports its containers terminated and deletes it with grace period 0
// and a UID precondition. It records core/v1 Events (Pulled, Created, Started, Killing) as the
// kubelet does.
//
// Annotations on a Pod (or a Pod template) steer it:
//
//	fake-kubelet.kubetrail.dev/exit-code: "N"   containers of a non-restarting Pod exit with N (default 0)
//	fake-kubelet.kubetrail.dev/fail-first: "N"  the first N Pods of the same owner exit with 1, later ones with exit-code
//	fake-kubelet.kubetrail.dev/run-ms: "N"      how long a non-restarting Pod runs (default 1000)
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
)

const (
	annExitCode  = "fake-kubelet.kubetrail.dev/exit-code"
	annFailFirst = "fake-kubelet.kubetrail.dev/fail-first"
	annRunMs     = "fake-kubelet.kubetrail.dev/run-ms"
)

// kubeletVersion is set with -ldflags -X main.kubeletVersion=... by scripts/install-k8s.sh.
var kubeletVersion = "v0.0.0"

type kubelet struct {
	client   kubernetes.Interface
	node     string
	recorder record.EventRecorder
	queue    workqueue.TypedRateLimitingInterface[string]
	lister   cache.Indexer

	mu       sync.Mutex
	started  map[types.UID]time.Time // pods reported Running, and when
	failures map[types.UID]int       // failed pods per owner UID
	done     map[types.UID]bool      // pods whose terminal status was reported
	nextIP   int
	podIPs   map[types.UID]string
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig with the node's client certificate")
	node := flag.String("node-name", "node-1", "the Node's name (the certificate's CN is system:node:NAME)")
	flag.Parse()
	if err := run(*kubeconfig, *node); err != nil {
		log.Fatalf("fake-kubelet: %v", err)
	}
}

func run(kubeconfig, node string) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.UserAgent = fmt.Sprintf("kubelet/%s (linux/amd64) kubernetes/0000000", kubeletVersion)
	cfg.QPS = 50
	cfg.Burst = 100
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	k := &kubelet{
		client:   client,
		node:     node,
		recorder: broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: node}),
		queue:    workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
		started:  map[types.UID]time.Time{},
		failures: map[types.UID]int{},
		done:     map[types.UID]bool{},
		podIPs:   map[types.UID]string{},
		nextIP:   2,
	}
	if err := k.registerNode(ctx); err != nil {
		return err
	}
	go k.heartbeat(ctx)

	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
		}))
	inf := factory.Core().V1().Pods().Informer()
	k.lister = inf.GetIndexer()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			k.queue.Add(key)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return fmt.Errorf("pod informer did not sync")
	}
	log.Printf("fake-kubelet: node %s ready", node)
	for i := 0; i < 4; i++ {
		go func() {
			for k.work(ctx) {
			}
		}()
	}
	<-ctx.Done()
	k.queue.ShutDown()
	return nil
}

func (k *kubelet) registerNode(ctx context.Context) error {
	now := metav1.Now()
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: k.node,
			Labels: map[string]string{
				"kubernetes.io/hostname":  k.node,
				"kubernetes.io/os":        "linux",
				"kubernetes.io/arch":      "amd64",
				"beta.kubernetes.io/os":   "linux",
				"beta.kubernetes.io/arch": "amd64",
			},
		},
	}
	created, err := k.client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		created, err = k.client.CoreV1().Nodes().Get(ctx, k.node, metav1.GetOptions{})
	}
	if err != nil {
		return fmt.Errorf("register node %s: %w", k.node, err)
	}
	res := corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse("8"),
		corev1.ResourceMemory:           resource.MustParse("32Gi"),
		corev1.ResourcePods:             resource.MustParse("110"),
		corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}
	created.Status = corev1.NodeStatus{
		Capacity:    res,
		Allocatable: res,
		Phase:       corev1.NodeRunning,
		Conditions: []corev1.NodeCondition{
			{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory", Message: "kubelet has sufficient memory available", LastHeartbeatTime: now, LastTransitionTime: now},
			{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure", Message: "kubelet has no disk pressure", LastHeartbeatTime: now, LastTransitionTime: now},
			{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID", Message: "kubelet has sufficient PID available", LastHeartbeatTime: now, LastTransitionTime: now},
			{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "kubelet is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now},
		},
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "127.0.0.1"},
			{Type: corev1.NodeHostName, Address: k.node},
		},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: 10250}},
		NodeInfo: corev1.NodeSystemInfo{
			MachineID: "fake", SystemUUID: "fake", BootID: "fake",
			KernelVersion: "6.1.0", OSImage: "fake-kubelet", ContainerRuntimeVersion: "fake://0",
			KubeletVersion: kubeletVersion, OperatingSystem: "linux", Architecture: "amd64",
		},
	}
	if _, err := k.client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("node %s status: %w", k.node, err)
	}
	return nil
}

// heartbeat renews the node's Lease every 10s as the kubelet does (nodeLeaseDurationSeconds 40).
func (k *kubelet) heartbeat(ctx context.Context) {
	leases := k.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	for {
		now := metav1.NewMicroTime(time.Now())
		l, err := leases.Get(ctx, k.node, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = leases.Create(ctx, &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: k.node, Namespace: corev1.NamespaceNodeLease},
				Spec: coordinationv1.LeaseSpec{
					HolderIdentity: ptr.To(k.node), LeaseDurationSeconds: ptr.To[int32](40), RenewTime: &now,
				},
			}, metav1.CreateOptions{})
		case err == nil:
			l.Spec.RenewTime = &now
			_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		}
		if err != nil && ctx.Err() == nil {
			log.Printf("fake-kubelet: lease: %v", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Second):
		}
	}
}

func (k *kubelet) work(ctx context.Context) bool {
	key, quit := k.queue.Get()
	if quit {
		return false
	}
	defer k.queue.Done(key)
	requeue, err := k.sync(ctx, key)
	switch {
	case err != nil:
		log.Printf("fake-kubelet: %s: %v", key, err)
		k.queue.AddRateLimited(key)
	case requeue > 0:
		k.queue.Forget(key)
		k.queue.AddAfter(key, requeue)
	default:
		k.queue.Forget(key)
	}
	return true
}

func annotationInt(p *corev1.Pod, name string, def int) int {
	if v, ok := p.Annotations[name]; ok {
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
	}
	return def
}

// sync brings one pod's reported status to where a kubelet would have it. It returns a delay
// after which the pod must be looked at again (a running pod that will complete).
func (k *kubelet) sync(ctx context.Context, key string) (time.Duration, error) {
	obj, exists, err := k.lister.GetByKey(key)
	if err != nil || !exists {
		return 0, err
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return 0, nil
	}
	if pod.DeletionTimestamp != nil {
		return 0, k.terminate(ctx, pod)
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return 0, nil
	}
	k.mu.Lock()
	startedAt, running := k.started[pod.UID]
	k.mu.Unlock()
	if !running {
		return k.start(ctx, pod)
	}
	if pod.Spec.RestartPolicy == corev1.RestartPolicyAlways {
		return 0, nil
	}
	runFor := time.Duration(annotationInt(pod, annRunMs, 1000)) * time.Millisecond
	if left := time.Until(startedAt.Add(runFor)); left > 0 {
		return left, nil
	}
	return 0, k.complete(ctx, pod)
}

func (k *kubelet) podIP(uid types.UID) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	if ip, ok := k.podIPs[uid]; ok {
		return ip
	}
	ip := fmt.Sprintf("10.244.%d.%d", k.nextIP/250, k.nextIP%250+2)
	k.nextIP++
	k.podIPs[uid] = ip
	return ip
}

func (k *kubelet) start(ctx context.Context, pod *corev1.Pod) (time.Duration, error) {
	now := metav1.Now()
	ip := k.podIP(pod.UID)
	statuses := make([]corev1.ContainerStatus, 0, len(pod.Spec.Containers))
	for i, c := range pod.Spec.Containers {
		statuses = append(statuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: "fake://" + c.Image,
			ContainerID: fmt.Sprintf("fake://%s-%d", pod.UID, i),
			Ready:       true, Started: ptr.To(true),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
		k.recorder.Eventf(pod, corev1.EventTypeNormal, "Pulled", "Container image %q already present on machine", c.Image)
		k.recorder.Eventf(pod, corev1.EventTypeNormal, "Created", "Created container: %s", c.Name)
		k.recorder.Eventf(pod, corev1.EventTypeNormal, "Started", "Started container %s", c.Name)
	}
	patch := map[string]any{
		"metadata": map[string]any{"uid": pod.UID},
		"status": map[string]any{
			"$setElementOrder/conditions": []map[string]string{
				{"type": "PodReadyToStartContainers"}, {"type": "Initialized"}, {"type": "Ready"},
				{"type": "ContainersReady"}, {"type": "PodScheduled"},
			},
			"conditions": []corev1.PodCondition{
				{Type: corev1.PodReadyToStartContainers, Status: corev1.ConditionTrue, LastTransitionTime: now},
				{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
				{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
				{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			},
			"containerStatuses": statuses,
			"hostIP":            "127.0.0.1",
			"hostIPs":           []map[string]string{{"ip": "127.0.0.1"}},
			"phase":             corev1.PodRunning,
			"podIP":             ip,
			"podIPs":            []map[string]string{{"ip": ip}},
			"startTime":         now,
		},
	}
	if err := k.patchStatus(ctx, pod, patch); err != nil {
		return 0, err
	}
	k.mu.Lock()
	k.started[pod.UID] = time.Now()
	k.mu.Unlock()
	if pod.Spec.RestartPolicy == corev1.RestartPolicyAlways {
		return 0, nil
	}
	return time.Duration(annotationInt(pod, annRunMs, 1000)) * time.Millisecond, nil
}

// exitCode decides how a non-restarting pod ends (see the package doc's annotations).
func (k *kubelet) exitCode(pod *corev1.Pod) int {
	code := annotationInt(pod, annExitCode, 0)
	failFirst := annotationInt(pod, annFailFirst, 0)
	owner := metav1.GetControllerOf(pod)
	if failFirst <= 0 || owner == nil {
		return code
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.failures[owner.UID] < failFirst {
		k.failures[owner.UID]++
		return 1
	}
	return code
}

func (k *kubelet) complete(ctx context.Context, pod *corev1.Pod) error {
	k.mu.Lock()
	if k.done[pod.UID] {
		k.mu.Unlock()
		return nil
	}
	k.mu.Unlock()
	code := k.exitCode(pod)
	phase, reason := corev1.PodSucceeded, "Completed"
	if code != 0 {
		phase, reason = corev1.PodFailed, "Error"
	}
	if err := k.reportTerminated(ctx, pod, phase, int32(code), reason); err != nil {
		return err
	}
	k.mu.Lock()
	k.done[pod.UID] = true
	k.mu.Unlock()
	return nil
}

func (k *kubelet) reportTerminated(ctx context.Context, pod *corev1.Pod, phase corev1.PodPhase, code int32, reason string) error {
	now := metav1.Now()
	startedAt := now
	if pod.Status.StartTime != nil {
		startedAt = *pod.Status.StartTime
	}
	statuses := make([]corev1.ContainerStatus, 0, len(pod.Spec.Containers))
	for i, c := range pod.Spec.Containers {
		statuses = append(statuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: "fake://" + c.Image,
			ContainerID: fmt.Sprintf("fake://%s-%d", pod.UID, i),
			Ready:       false, Started: ptr.To(false),
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: code, Reason: reason, StartedAt: startedAt, FinishedAt: now,
				ContainerID: fmt.Sprintf("fake://%s-%d", pod.UID, i),
			}},
		})
	}
	notReady := "PodCompleted"
	patch := map[string]any{
		"metadata": map[string]any{"uid": pod.UID},
		"status": map[string]any{
			"$setElementOrder/conditions": []map[string]string{
				{"type": "PodReadyToStartContainers"}, {"type": "Initialized"}, {"type": "Ready"},
				{"type": "ContainersReady"}, {"type": "PodScheduled"},
			},
			"conditions": []corev1.PodCondition{
				{Type: corev1.PodReadyToStartContainers, Status: corev1.ConditionFalse, LastTransitionTime: now},
				{Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: notReady, LastTransitionTime: now},
				{Type: corev1.ContainersReady, Status: corev1.ConditionFalse, Reason: notReady, LastTransitionTime: now},
			},
			"containerStatuses": statuses,
			"phase":             phase,
		},
	}
	return k.patchStatus(ctx, pod, patch)
}

// terminate handles a graceful delete: containers killed, terminal status, then the final
// DELETE with grace period 0 and a UID precondition, as the kubelet's status manager does.
func (k *kubelet) terminate(ctx context.Context, pod *corev1.Pod) error {
	k.mu.Lock()
	done := k.done[pod.UID]
	k.mu.Unlock()
	if !done {
		for _, c := range pod.Spec.Containers {
			k.recorder.Eventf(pod, corev1.EventTypeNormal, "Killing", "Stopping container %s", c.Name)
		}
		phase := corev1.PodSucceeded
		if pod.Status.Phase == corev1.PodFailed {
			phase = corev1.PodFailed
		}
		if pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed {
			if err := k.reportTerminated(ctx, pod, phase, 0, "Completed"); err != nil && !apierrors.IsNotFound(err) {
				return err
			}
		}
	}
	err := k.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: ptr.To[int64](0),
		Preconditions:      &metav1.Preconditions{UID: ptr.To(pod.UID)},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return err
	}
	k.mu.Lock()
	delete(k.started, pod.UID)
	delete(k.done, pod.UID)
	delete(k.podIPs, pod.UID)
	k.mu.Unlock()
	return nil
}

func (k *kubelet) patchStatus(ctx context.Context, pod *corev1.Pod, patch map[string]any) error {
	body, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	_, err = k.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType, body,
		metav1.PatchOptions{}, "status")
	return err
}
