#!/usr/bin/env bash
# A real Kubernetes API server for integration tests: kube-apiserver + etcd
# only (no kubelet, scheduler or controller-manager), listening on 127.0.0.1.
#
#   scripts/kube-test-env.sh build          build + cache kube-apiserver, kubectl, etcd, helm
#   eval "$(scripts/kube-test-env.sh start)" start (idempotent), export KUBECONFIG/PATH
#   scripts/kube-test-env.sh env            print the export lines (exit 1 if not running)
#   scripts/kube-test-env.sh status         say what runs where
#   scripts/kube-test-env.sh stop [--clean] stop; --clean also wipes the etcd data
#
# The binaries are compiled from the Go module proxy with the local Go
# toolchain, using the Go modules in tests/kube-env/ (kube-apiserver and
# kubectl from k8s.io/kubernetes; etcd from go.etcd.io/etcd/server/v3; helm,
# for the chart tests, from helm.sh/helm/v3 in tests/kube-env/helm, with
# argocd-health, the Argo CD health-check runner of those tests), and
# cached in $TENANTRY_CACHE/kube/<k8s-version>/bin, so only the first run pays
# for the build.  `start` also installs the Gateway API CRDs (standard
# channel, version $GATEWAY_API_VERSION below), taken from the Go module zip of
# sigs.k8s.io/gateway-api and cached in $TENANTRY_CACHE/gateway-api/<version>;
# it re-applies them when they are missing or of another version.  Only
# `export ...` lines go to stdout; everything else goes to stderr.
#
# Environment:
#   TENANTRY_CACHE      cache root (default ~/.cache/tenantry)
#   TENANTRY_KUBE_PORT  apiserver port on 127.0.0.1 (default 16443; when the
#                       default is taken by something else the next free port
#                       is used, an explicitly set port must be free)
#   TENANTRY_ETCD_PORT  etcd client port (default 16379; peer port = +1)
#   TENANTRY_KUBE_START_TIMEOUT  seconds to wait for /readyz (default 60)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODDIR=$ROOT/tests/kube-env
CACHE=${TENANTRY_CACHE:-$HOME/.cache/tenantry}

# The Kubernetes version is the one required by tests/kube-env/go.mod.
K8S_VERSION=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$MODDIR/go.mod")
[[ -n $K8S_VERSION ]] || { echo "kube-test-env: no k8s.io/kubernetes version in $MODDIR/go.mod" >&2; exit 1; }
ETCD_VERSION=$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" {print $3}' "$MODDIR/etcd/go.mod")
HELM_VERSION=$(awk '$1 == "require" && $2 == "helm.sh/helm/v3" {print $3}' "$MODDIR/helm/go.mod")

BIN=$CACHE/kube/$K8S_VERSION/bin
# The Gateway API release whose CRDs the tests create HTTPRoutes against.
GATEWAY_API_VERSION=v1.6.3
GATEWAY_CRDS=$CACHE/gateway-api/$GATEWAY_API_VERSION
RUN=$CACHE/kube-run
LOCK=$CACHE/kube.lock
START_TIMEOUT=${TENANTRY_KUBE_START_TIMEOUT:-60}
# Service ClusterIPs: every tenant has a Service, and without a controller-manager nothing
# garbage-collects the Services of deleted Tenants, so a /24 (254 addresses) ran out after a
# few hundred tenants.  A /16 holds 65,534.  An apiserver started with another range is
# restarted by `start` (etcd and its data are kept).
SERVICE_RANGE=10.0.0.0/16

log() { echo "kube-test-env: $*" >&2; }
die() { log "$*"; exit 1; }

# One invocation at a time (two parallel `start`s must not both build or
# both launch servers).
lock() {
  mkdir -p "$CACHE"
  exec 9>"$LOCK"
  flock 9
}

# --- build ---------------------------------------------------------------

# A stamp of the module files the binaries were built from: when go.mod or
# go.sum change (e.g. a version bump of etcd), the binaries are rebuilt.
build_stamp() {
  cat "$MODDIR/go.mod" "$MODDIR/go.sum" "$MODDIR/etcd/go.mod" "$MODDIR/etcd/go.sum" | sha256sum | cut -d' ' -f1
}

binaries_ok() {
  [[ -x $BIN/kube-apiserver && -x $BIN/kubectl && -x $BIN/etcd && -f $BIN/.stamp ]] &&
    [[ $(cat "$BIN/.stamp") == "$(build_stamp)" ]]
}

# helm has its own stamp, so adding or bumping it does not rebuild the others.
# The same module builds argocd-health (an Argo CD Lua health-check runner).
helm_stamp() {
  cat "$MODDIR/helm/go.mod" "$MODDIR/helm/go.sum" "$MODDIR"/helm/argocd-health/*.go | sha256sum | cut -d' ' -f1
}

helm_ok() {
  [[ -x $BIN/helm && -x $BIN/argocd-health && -f $BIN/.helm.stamp ]] &&
    [[ $(cat "$BIN/.helm.stamp") == "$(helm_stamp)" ]]
}

# go_build <module dir> <package> <output name> [extra ldflags]
go_build() {
  local dir=$1 pkg=$2 name=$3 ldflags="-s -w ${4:-}" t0
  t0=$(date +%s)
  log "building $name ($pkg) — the first build takes several minutes"
  # GOTOOLCHAIN=local: never fetch another Go toolchain, fail instead.
  # -mod=readonly: go.mod/go.sum are complete; a build never edits them.
  # CGO_ENABLED=0: static binaries, as upstream builds these.
  (cd "$dir" && GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 \
    go build -trimpath -ldflags "$ldflags" -o "$BIN/.$name.tmp" "$pkg")
  mv -f "$BIN/.$name.tmp" "$BIN/$name"
  log "built $name in $(( $(date +%s) - t0 ))s ($(du -h "$BIN/$name" | cut -f1))"
}

do_build() {
  build_kube
  build_helm
}

build_helm() {
  helm_ok && return 0
  command -v go >/dev/null || die "go is not installed (needed once to build the binaries)"
  mkdir -p "$BIN"
  rm -f "$BIN/.helm.stamp"
  # Without the version helm reports "v3.22"; the Kubernetes version is the
  # one helm assumes for .Capabilities (and deprecation checks) in `helm
  # template`/`lint`, set from its client-go as upstream's Makefile does.
  local cg major minor
  cg=$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$MODDIR/helm/go.mod")
  cg=${cg#v0.}
  major=1 minor=${cg%%.*}
  go_build "$MODDIR/helm" helm.sh/helm/v3/cmd/helm helm \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean $(
      for p in pkg/lint/rules pkg/chartutil; do
        printf -- '-X helm.sh/helm/v3/%s.k8sVersionMajor=%s -X helm.sh/helm/v3/%s.k8sVersionMinor=%s ' "$p" "$major" "$p" "$minor"
      done
    )"
  go_build "$MODDIR/helm" ./argocd-health argocd-health
  helm_stamp >"$BIN/.helm.stamp"
}

build_kube() {
  if binaries_ok; then
    return 0
  fi
  command -v go >/dev/null || die "go is not installed (needed once to build the binaries)"
  mkdir -p "$BIN"
  rm -f "$BIN/.stamp"
  # Without these the binaries report "v0.0.0-master+$Format:%H$", which
  # clients (and kubectl itself) fail to parse; upstream's build sets the same.
  local minor=${K8S_VERSION#v1.}
  minor=${minor%%.*}
  local k8s_ldflags="" v
  for v in "gitVersion=$K8S_VERSION" gitMajor=1 "gitMinor=$minor" gitTreeState=clean; do
    k8s_ldflags+=" -X k8s.io/component-base/version.$v -X k8s.io/client-go/pkg/version.$v"
  done
  go_build "$MODDIR" k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver "$k8s_ldflags"
  go_build "$MODDIR" k8s.io/kubernetes/cmd/kubectl kubectl "$k8s_ldflags"
  # etcd is built too rather than taken from Debian (bookworm ships 3.4.23):
  # with etcd 3.4 kube-apiserver turns off its RequestWatchProgress storage
  # feature, so streaming lists (watch with sendInitialEvents=true) are
  # refused, unlike on any real cluster.
  go_build "$MODDIR/etcd" go.etcd.io/etcd/server/v3 etcd
  build_stamp >"$BIN/.stamp"
  log "binaries cached in $BIN"
}

# --- process helpers -----------------------------------------------------

# pid_running <pid>: exists and is not a zombie (an exited server whose
# parent has not reaped it yet still answers kill -0).
pid_running() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $st && $st != Z ]]
}

# alive <name>: the pid in $RUN/<name>.pid runs a binary named <name>
# (guards against a pid recycled by an unrelated process; any cached version
# counts, so `stop` still finds servers started before a version bump).
alive() {
  local pidf=$RUN/$1.pid pid
  [[ -f $pidf ]] || return 1
  pid=$(cat "$pidf")
  [[ $pid =~ ^[0-9]+$ ]] && pid_running "$pid" || return 1
  local cmd
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ ${cmd%% *} == */$1 ]]
}

# stop_proc <name>: SIGTERM, wait up to 20s, then SIGKILL.
stop_proc() {
  local name=$1 pidf=$RUN/$1.pid pid i
  if alive "$name"; then
    pid=$(cat "$pidf")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
      pid_running "$pid" || break
      sleep 0.1
    done
    if pid_running "$pid"; then
      log "$name did not exit after SIGTERM, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$pidf"
}

port_in_use() {
  # Something accepts connections on 127.0.0.1:$1.
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# free_port <default> <explicit?> <count>: the default port (with <count>
# consecutive ports free from it), or if that is taken and was not set
# explicitly, the next free one.
free_port() {
  local p=$1 explicit=$2 count=$3 i j busy
  for ((i = 0; i < 100; i++)); do
    busy=0
    for ((j = 0; j < count; j++)); do
      port_in_use "$((p + j))" && busy=1
    done
    if ((busy == 0)); then
      echo "$p"
      return 0
    fi
    [[ $explicit == 1 ]] && die "port $p$( ((count > 1)) && echo " (or one of the $((count - 1)) after it)") on 127.0.0.1 is already in use"
    p=$((p + count))
  done
  die "no free port found near $1"
}

state() { cat "$RUN/$1" 2>/dev/null; }

readyz() {
  local port token
  port=$(state apiserver.port) && token=$(state admin.token) || return 1
  [[ $(curl -s --max-time 3 --cacert "$RUN/pki/ca.crt" -H "Authorization: Bearer $token" \
    "https://127.0.0.1:$port/readyz" 2>/dev/null) == ok ]]
}

running() { alive etcd && alive kube-apiserver && readyz; }

print_env() {
  printf 'export KUBECONFIG=%q\n' "$RUN/kubeconfig"
  # $PATH stays literal: the caller's eval expands it.
  # shellcheck disable=SC2016
  printf 'export PATH=%q:$PATH\n' "$BIN"
}

# --- certificates, tokens, kubeconfig -------------------------------------

gen_pki() {
  local pki=$RUN/pki
  [[ -f $pki/ca.crt && -f $pki/apiserver.crt && -f $pki/sa.key && -f $RUN/admin.token ]] && return 0
  log "generating CA, serving certificate, service-account keys and admin token"
  rm -rf "$pki"
  mkdir -p "$pki"
  (
    cd "$pki"
    umask 077
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout ca.key -out ca.crt -days 3650 -subj "/CN=tenantry-test-ca" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
    # 10.0.0.1 is the in-cluster "kubernetes" service IP (first address of
    # --service-cluster-ip-range).
    printf '%s\n' \
      "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
      "extendedKeyUsage=serverAuth" "keyUsage=critical,digitalSignature,keyEncipherment" >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out apiserver.crt -days 3650 -extfile apiserver.ext 2>/dev/null
    # Service-account token signing key pair.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
    rm -f apiserver.csr apiserver.ext ca.srl
  )
  # Static bearer token for user "admin" in group system:masters
  # (format: token,user,uid,"groups").
  (umask 077 && openssl rand -hex 24 >"$RUN/admin.token")
  printf '%s,admin,admin,"system:masters"\n' "$(cat "$RUN/admin.token")" >"$RUN/tokens.csv"
  chmod 600 "$RUN/tokens.csv"
}

write_kubeconfig() {
  local port=$1
  (umask 077 && cat >"$RUN/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tenantry-test
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority-data: $(base64 -w0 <"$RUN/pki/ca.crt")
users:
- name: admin
  user:
    token: $(cat "$RUN/admin.token")
contexts:
- name: tenantry-test
  context:
    cluster: tenantry-test
    user: admin
current-context: tenantry-test
EOF
  )
}

# --- Gateway API CRDs -------------------------------------------------------

# The standard-channel CRDs of the Go module sigs.k8s.io/gateway-api (from the
# Go module proxy), cached; only the CRDs (the module's ValidatingAdmission-
# Policy guards CRD upgrades on real clusters and is left out).
fetch_gateway_crds() {
  [[ -f $GATEWAY_CRDS/.done ]] && return 0
  command -v go >/dev/null || die "go is not installed (needed once to fetch the Gateway API CRDs)"
  local dir
  dir=$(cd /tmp && GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod download -json \
    "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -d $dir/config/crd/standard ]] || die "no config/crd/standard in sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION"
  rm -rf "$GATEWAY_CRDS"
  mkdir -p "$GATEWAY_CRDS"
  cp "$dir"/config/crd/standard/gateway.networking.k8s.io_*.yaml "$GATEWAY_CRDS/"
  rm -f "$GATEWAY_CRDS"/*_vap_*.yaml
  touch "$GATEWAY_CRDS/.done"
  log "Gateway API $GATEWAY_API_VERSION CRDs cached in $GATEWAY_CRDS"
}

# Applies them unless the HTTPRoute CRD of this version is already served.
install_gateway_crds() {
  local kubectl=("$BIN/kubectl" --kubeconfig "$RUN/kubeconfig") have
  have=$("${kubectl[@]}" get crd httproutes.gateway.networking.k8s.io --ignore-not-found \
    -o jsonpath='{.metadata.annotations.gateway\.networking\.k8s\.io/bundle-version}' 2>/dev/null || true)
  [[ $have == "$GATEWAY_API_VERSION" ]] && return 0
  fetch_gateway_crds
  log "installing the Gateway API $GATEWAY_API_VERSION CRDs"
  "${kubectl[@]}" apply --server-side --force-conflicts -f "$GATEWAY_CRDS" >&2
  "${kubectl[@]}" wait --for=condition=Established --timeout=60s \
    crd/httproutes.gateway.networking.k8s.io crd/gateways.gateway.networking.k8s.io >&2
}

# ensure_service_range: a ServiceCIDR of $SERVICE_RANGE.  The flag alone is not enough: the
# default ServiceCIDR ("kubernetes") is stored in etcd on first start and an apiserver started
# later with a wider flag keeps the stored one (it only warns "KubernetesDefaultServiceCIDRInconsistent"),
# so etcd data from before the range was widened would still allocate from the /24.  An extra
# (overlapping) ServiceCIDR widens the allocatable range either way.
ensure_service_range() {
  "$BIN/kubectl" --kubeconfig "$RUN/kubeconfig" apply --server-side -f - >/dev/null <<EOF_CIDR
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata:
  name: tenantry-test-range
spec:
  cidrs: ["$SERVICE_RANGE"]
EOF_CIDR
}

# --- start / stop ----------------------------------------------------------

fail_start() {
  log "$1"
  for f in etcd kube-apiserver; do
    if [[ -f $RUN/$f.log ]]; then
      echo "----- last lines of $RUN/$f.log -----" >&2
      tail -n 40 "$RUN/$f.log" >&2
    fi
  done
  stop_proc kube-apiserver
  stop_proc etcd
  exit 1
}

# service_range_ok: the running apiserver was started with --service-cluster-ip-range=$SERVICE_RANGE.
service_range_ok() {
  tr '\0' '\n' <"/proc/$(cat "$RUN/kube-apiserver.pid")/cmdline" 2>/dev/null |
    grep -qxF -- "--service-cluster-ip-range=$SERVICE_RANGE"
}

do_start() {
  if running && ! service_range_ok; then
    log "kube-apiserver runs with another --service-cluster-ip-range; restarting it with $SERVICE_RANGE"
    stop_proc kube-apiserver
  fi
  if running; then
    log "already running on https://127.0.0.1:$(state apiserver.port)"
    ensure_service_range
    install_gateway_crds
    print_env
    return 0
  fi
  # Half-started or crashed leftovers: clear them first.  (The servers are
  # started with the lock's fd 9 closed, or they would hold the lock.)
  stop_proc kube-apiserver
  stop_proc etcd
  do_build
  mkdir -p "$RUN"
  gen_pki

  local etcd_port api_port pid i t0
  t0=$(date +%s)
  etcd_port=$(free_port "${TENANTRY_ETCD_PORT:-16379}" "$([[ -n ${TENANTRY_ETCD_PORT:-} ]] && echo 1 || echo 0)" 2)
  echo "$etcd_port" >"$RUN/etcd.port"
  api_port=$(free_port "${TENANTRY_KUBE_PORT:-16443}" "$([[ -n ${TENANTRY_KUBE_PORT:-} ]] && echo 1 || echo 0)" 1)
  echo "$api_port" >"$RUN/apiserver.port"

  # Fresh logs for each start (the previous run's are kept as *.log.prev).
  for i in etcd kube-apiserver; do
    [[ -f $RUN/$i.log ]] && mv -f "$RUN/$i.log" "$RUN/$i.log.prev"
  done

  # etcd: single member on loopback, non-default ports, data in the state dir.
  # setsid: the servers outlive this script (and its terminal/session).
  log "starting etcd on 127.0.0.1:$etcd_port"
  setsid "$BIN/etcd" \
    --name=tenantry-test \
    --data-dir="$RUN/etcd-data" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" \
    --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$((etcd_port + 1))" \
    --initial-advertise-peer-urls="http://127.0.0.1:$((etcd_port + 1))" \
    --initial-cluster="tenantry-test=http://127.0.0.1:$((etcd_port + 1))" \
    --unsafe-no-fsync \
    --log-level=warn \
    </dev/null >"$RUN/etcd.log" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$RUN/etcd.pid"
  for ((i = 0; ; i++)); do
    pid_running "$pid" || fail_start "etcd exited during startup"
    [[ $(curl -s --max-time 2 "http://127.0.0.1:$etcd_port/health" 2>/dev/null) == *'"health":"true"'* ]] && break
    ((i < START_TIMEOUT * 5)) || fail_start "etcd not healthy after ${START_TIMEOUT}s"
    sleep 0.2
  done

  log "starting kube-apiserver $K8S_VERSION on https://127.0.0.1:$api_port"
  # --authorization-mode=RBAC: a ServiceAccount / impersonated user only gets
  #   what its Roles grant (the admin token is in system:masters).
  # --disable-admission-plugins=ServiceAccount: that plugin rejects Pods until
  #   the controller-manager's token controller has created the namespace's
  #   "default" ServiceAccount, and there is no controller-manager here.
  # --endpoint-reconciler-type=none: the reconciler of the "kubernetes"
  #   Service's endpoints refuses a loopback advertise address.
  setsid "$BIN/kube-apiserver" \
    --advertise-address=127.0.0.1 \
    --endpoint-reconciler-type=none \
    --bind-address=127.0.0.1 \
    --secure-port="$api_port" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --tls-cert-file="$RUN/pki/apiserver.crt" \
    --tls-private-key-file="$RUN/pki/apiserver.key" \
    --client-ca-file="$RUN/pki/ca.crt" \
    --token-auth-file="$RUN/tokens.csv" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$RUN/pki/sa.pub" \
    --service-account-signing-key-file="$RUN/pki/sa.key" \
    --service-cluster-ip-range="$SERVICE_RANGE" \
    --authorization-mode=RBAC \
    --disable-admission-plugins=ServiceAccount \
    --allow-privileged=true \
    --cert-dir="$RUN/pki" \
    --profiling=false \
    </dev/null >"$RUN/kube-apiserver.log" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$RUN/kube-apiserver.pid"
  for ((i = 0; ; i++)); do
    pid_running "$pid" || fail_start "kube-apiserver exited during startup"
    readyz && break
    ((i < START_TIMEOUT * 4)) || fail_start "kube-apiserver /readyz not ok after ${START_TIMEOUT}s"
    sleep 0.25
  done
  write_kubeconfig "$api_port"
  ensure_service_range
  install_gateway_crds
  log "ready in $(( $(date +%s) - t0 ))s (state and logs in $RUN)"
  print_env
}

do_stop() {
  stop_proc kube-apiserver
  stop_proc etcd
  if [[ ${1:-} == --clean ]]; then
    log "wiping etcd data in $RUN/etcd-data"
    rm -rf "$RUN/etcd-data"
  fi
}

do_status() {
  local s
  for s in etcd kube-apiserver; do
    if alive "$s"; then
      echo "$s: running (pid $(cat "$RUN/$s.pid"))"
    else
      echo "$s: stopped"
    fi
  done
  if running; then
    echo "ready: https://127.0.0.1:$(state apiserver.port) (etcd 127.0.0.1:$(state etcd.port))"
  fi
  echo "kubernetes $K8S_VERSION, etcd $ETCD_VERSION, binaries $BIN ($(binaries_ok && echo built || echo 'not built'))"
  echo "helm $HELM_VERSION ($(helm_ok && echo built || echo 'not built'))"
  echo "state: $RUN"
}

case ${1:-} in
build) lock; do_build ;;
start) lock; do_start ;;
stop) lock; do_stop "${2:-}" ;;
env) running || die "not running (run: $0 start)"; print_env ;;
status) do_status ;;
*)
  echo "usage: $0 build|start|stop [--clean]|env|status" >&2
  exit 2
  ;;
esac
