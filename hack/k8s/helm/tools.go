//go:build tools

// Blank import keeps Helm's requirements in go.mod/go.sum through 'go mod tidy'.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
