// Command kstatus prints what Flux's status library (kstatus, from
// sigs.k8s.io/cli-utils) computes for Kubernetes objects, so tests can check
// the operator's status against the library itself rather than a copy of its rules.
//
// stdin: one object as JSON, a JSON array of objects, or a `kind: List` with `items`.
// stdout: one JSON line per object, in input order:
//
//	{"name": ..., "namespace": ..., "kind": ..., "status": "Current", "message": ...}
//
// A malformed object (e.g. a condition that is not an object) exits 1 with the
// library's error on stderr and prints nothing.
//
// Built and cached by e2e/binaries.sh (component `kstatus`); its go.mod is written
// there so the pinned cli-utils version lives in one place.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type line struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Kind      string `json:"kind"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

// objects splits the input into the objects to compute.
func objects(doc interface{}) ([]map[string]interface{}, error) {
	var items []interface{}
	switch v := doc.(type) {
	case []interface{}:
		items = v
	case map[string]interface{}:
		kind, _ := v["kind"].(string)
		list, isList := v["items"].([]interface{})
		if !(isList && strings.HasSuffix(kind, "List")) {
			return []map[string]interface{}{v}, nil
		}
		items = list
	default:
		return nil, fmt.Errorf("expected a JSON object or array, got %T", doc)
	}
	out := make([]map[string]interface{}, 0, len(items))
	for i, item := range items {
		obj, ok := item.(map[string]interface{})
		if !ok {
			return nil, fmt.Errorf("item %d: expected a JSON object, got %T", i, item)
		}
		out = append(out, obj)
	}
	return out, nil
}

func run(in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	// apimachinery's decoder keeps integers as int64, which kstatus's NestedInt64
	// lookups of generation and observedGeneration require (encoding/json gives float64).
	var doc interface{}
	if err := utiljson.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("decoding stdin: %w", err)
	}
	objs, err := objects(doc)
	if err != nil {
		return err
	}
	lines := make([]line, 0, len(objs))
	for _, obj := range objs {
		u := &unstructured.Unstructured{Object: obj}
		res, err := status.Compute(u)
		if err != nil {
			return fmt.Errorf("%s %s: %w", u.GetKind(), u.GetName(), err)
		}
		lines = append(lines, line{u.GetName(), u.GetNamespace(), u.GetKind(), string(res.Status), res.Message})
	}
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false)
	for _, l := range lines {
		if err := enc.Encode(l); err != nil {
			return err
		}
	}
	return nil
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}
