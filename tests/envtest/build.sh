#!/usr/bin/env bash
# Builds the envtest control plane once and caches it under the user's cache dir:
# kube-apiserver and kubectl from the Go module proxy at a pinned Kubernetes version,
# and etcd from Debian's packages. Prints the directory holding the binaries.
#
# k8s.io/kubernetes cannot be `go install`ed (its go.mod replaces the staging modules
# with local paths), so a tiny wrapper module requires it, maps every staging module
# to its published version, and builds the apiserver command from it.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.36.3}"
[ -x /usr/local/go/bin/go ] && PATH="/usr/local/go/bin:$PATH"
STAGING_VERSION="0.${K8S_VERSION#1.}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/media-fleet/envtest/k8s-${K8S_VERSION}"
mkdir -p "$CACHE"

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -x "$CACHE/etcd" ]; then
  if ! command -v etcd >/dev/null 2>&1 && [ ! -x /usr/bin/etcd ]; then
    echo "envtest: installing etcd-server (Debian package)" >&2
    sudo_if_needed apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq --no-install-recommends etcd-server >&2
  fi
  ln -sf "$(command -v etcd || echo /usr/bin/etcd)" "$CACHE/etcd"
fi

# The version is stamped at link time, as Kubernetes' release build does; without it
# the server calls itself v0.0.0 and Helm refuses charts that set kubeVersion.
VERSION_LDFLAGS="-X k8s.io/component-base/version.gitVersion=v${K8S_VERSION} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) -X k8s.io/component-base/version.gitTreeState=clean"
if [ ! -x "$CACHE/kube-apiserver" ] || ! "$CACHE/kube-apiserver" --version 2>/dev/null | grep -q "v${K8S_VERSION}\$"; then
  echo "envtest: building kube-apiserver v${K8S_VERSION} from the Go module proxy (about ten minutes, once)" >&2
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  gomod="$(cd "$work" && go mod download -json "k8s.io/kubernetes@v${K8S_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  {
    echo "module envtest/kubeapiserver"
    echo
    echo "go $(sed -n 's/^go \([0-9.]*\).*/\1/p' "$gomod")"
    echo
    echo "require k8s.io/kubernetes v${K8S_VERSION}"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 v'"${STAGING_VERSION}"'#p' "$gomod"
    echo ")"
  } > "$work/go.mod"
  cat > "$work/main.go" <<'GO'
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
GO
  (cd "$work" && go mod tidy >&2 && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w ${VERSION_LDFLAGS}" -o "$CACHE/kube-apiserver.tmp" . >&2)
  mv "$CACHE/kube-apiserver.tmp" "$CACHE/kube-apiserver"
fi

# kubectl, for what a platform operator runs: `kubectl apply -k deploy/base`. Its
# command lives in k8s.io/kubernetes, but the published k8s.io/kubectl module has the
# whole of it, so a two-line main over that module is enough.
if [ ! -x "$CACHE/kubectl" ]; then
  echo "envtest: building kubectl v${K8S_VERSION} from the Go module proxy (a few minutes, once)" >&2
  kwork="$(mktemp -d)"
  printf 'module envtest/kubectl\n\ngo 1.25\n\nrequire k8s.io/kubectl v%s\n' "${STAGING_VERSION}" > "$kwork/go.mod"
  cat > "$kwork/main.go" <<'GO'
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	if err := cli.RunNoErrOutput(cmd.NewDefaultKubectlCommand()); err != nil {
		util.CheckErr(err)
	}
}
GO
  (cd "$kwork" && go mod tidy >&2 && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$CACHE/kubectl.tmp" . >&2)
  rm -rf "$kwork"
  mv "$CACHE/kubectl.tmp" "$CACHE/kubectl"
fi

echo "$CACHE"
