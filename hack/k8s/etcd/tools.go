//go:build tools

// Blank import keeps the etcd server's requirements in go.mod/go.sum through 'go mod tidy'.
package tools

import _ "go.etcd.io/etcd/server/v3"
