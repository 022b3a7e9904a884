// Command kstatus prints the status that kstatus (github.com/fluxcd/cli-utils, the fork Flux runs) computes for
// Kubernetes objects, the way Flux's health checks and `kstatus`-based tools judge them.
// It reads one JSON object per line on standard input and writes one JSON line per object:
// {"status": "Current|InProgress|Failed|Terminating|NotFound|Unknown", "message": "..."}.
// Used by the tests of the operator's status (tests/integration/test_kstatus.py).
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 0, 1<<20), 1<<26)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		// UnmarshalJSON keeps integers int64, as the apiserver's clients do (plain JSON would
		// make them float64, which kstatus refuses).
		obj := &unstructured.Unstructured{}
		if err := obj.UnmarshalJSON(in.Bytes()); err != nil {
			fmt.Fprintln(os.Stderr, "kstatus: not a Kubernetes object:", err)
			os.Exit(2)
		}
		result, err := status.Compute(obj)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kstatus:", err)
			os.Exit(1)
		}
		if err := out.Encode(map[string]string{"status": result.Status.String(), "message": result.Message}); err != nil {
			fmt.Fprintln(os.Stderr, "kstatus:", err)
			os.Exit(1)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}
