// Package chart renders the meshredirect Helm chart (deploy/charts/meshredirect) with Helm's
// own Go library, as `helm template` does: for the plain manifest that `make manifests` writes
// (deploy/meshredirect.yaml, see ../render) and for the chart's tests.
//
// It lives in the nested module deploy/tools so that Helm's dependencies never reach the
// root go.mod. The tests here lint the chart, check every value against the flag it sets,
// check the pod's privileges, and dry-run every object on a real kube-apiserver
// (testenv/kubeapi); image_test.go checks the Dockerfile and that its build is static.
package chart
