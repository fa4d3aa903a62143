// Command etcd is etcd's own server (go.etcd.io/etcd/server/v3/etcdmain), built from the version
// pinned in ../../go.mod so the local control plane needs no system package.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
