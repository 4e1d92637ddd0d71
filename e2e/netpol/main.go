// Command netpol says whether NetworkPolicies allow a connection, by the semantics of cyclonus's
// policy engine (github.com/mattfenwick/cyclonus/pkg/matcher: the NetworkPolicy v1 rules as
// Kubernetes SIG Network's conformance probes check CNIs against them), so tests check the
// operator's policies against an existing engine rather than a matcher of their own.
//
// stdin: {"policies": [NetworkPolicy, ...], "traffic": [{"source": PEER, "destination": PEER,
// "port": 8000, "portName": "http", "protocol": "TCP"}, ...]}, where PEER is
// {"namespace": ..., "namespaceLabels": {...}, "podLabels": {...}, "ip": ...} (namespace
// empty: an address outside the cluster).
// stdout: a JSON array, one entry per traffic in input order: {"allowed", "ingress", "egress"}.
//
// Built and cached by e2e/binaries.sh (component `netpol`); its go.mod is written there so the
// pinned cyclonus version lives in one place.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/mattfenwick/cyclonus/pkg/matcher"
	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

type peer struct {
	Namespace       string            `json:"namespace"`
	NamespaceLabels map[string]string `json:"namespaceLabels"`
	PodLabels       map[string]string `json:"podLabels"`
	IP              string            `json:"ip"`
}

type traffic struct {
	Source      peer   `json:"source"`
	Destination peer   `json:"destination"`
	Port        int    `json:"port"`
	PortName    string `json:"portName"`
	Protocol    string `json:"protocol"`
}

type input struct {
	Policies []*networkingv1.NetworkPolicy `json:"policies"`
	Traffic  []traffic                     `json:"traffic"`
}

type verdict struct {
	Allowed bool `json:"allowed"`
	Ingress bool `json:"ingress"`
	Egress  bool `json:"egress"`
}

func (p peer) matcher() *matcher.TrafficPeer {
	if p.Namespace == "" {
		return &matcher.TrafficPeer{IP: p.IP}
	}
	return &matcher.TrafficPeer{
		IP: p.IP,
		Internal: &matcher.InternalPeer{
			Namespace:       p.Namespace,
			NamespaceLabels: p.NamespaceLabels,
			PodLabels:       p.PodLabels,
		},
	}
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "netpol: reading the input:", err)
		os.Exit(2)
	}
	policy := matcher.BuildNetworkPolicies(false, in.Policies)
	out := make([]verdict, 0, len(in.Traffic))
	for _, t := range in.Traffic {
		protocol := v1.Protocol(t.Protocol)
		if protocol == "" {
			protocol = v1.ProtocolTCP
		}
		result := policy.IsTrafficAllowed(&matcher.Traffic{
			Source:           t.Source.matcher(),
			Destination:      t.Destination.matcher(),
			ResolvedPort:     t.Port,
			ResolvedPortName: t.PortName,
			Protocol:         protocol,
		})
		out = append(out, verdict{
			Allowed: result.IsAllowed(),
			Ingress: result.Ingress.IsAllowed(),
			Egress:  result.Egress.IsAllowed(),
		})
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "netpol:", err)
		os.Exit(1)
	}
}
