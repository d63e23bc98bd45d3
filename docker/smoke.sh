#!/usr/bin/env bash
# make docker-smoke: build the CPU image and run the CPU services in containers.
#
#   docker/smoke.sh [--skip-without-engine]
#
# 1. A Docker engine: the running one; else, as root, Debian's docker.io and
#    docker-compose are installed where absent and dockerd is started here
#    (and stopped at the end).
# 2. The base images (PYTHON_IMAGE, UV_IMAGE: the Dockerfile's defaults) are
#    pulled; where no registry serves them, stand-ins are built: Debian bookworm
#    (mmdebstrap, minbase) with its python3 3.11 and this machine's CA bundle,
#    and a FROM-scratch image holding /uv and /uvx from PyPI's uv wheel of the
#    same version.
# 3. The CPU image (VARIANT=cpu) is built; torch's CPU wheel comes from
#    TORCH_CPU_INDEX when set, else from a local index over $CLAB_WHEELS when
#    it holds torch-<the lock's version>+cpu for cp311, else from the
#    Dockerfile's default (download.pytorch.org).
# 4. Through docker-compose.yml (its GPU reservations removed: no GPU here), on
#    volumes owned by uid CLAB_SMOKE_UID (default 4321, not the image's 1000):
#    clab validate on every spec, both data services, a tiny curriculum-trainer
#    run on the CPU, the evaluator and the plotter at small sizes; then checks
#    that each wrote what it should and that every file belongs to that uid.
# 5. Its containers, images and work folder are removed, whatever happened.
#
# Exit 0: passed. 1: a step failed. 2: bad usage. 77: no engine could be used
# (with --skip-without-engine: one line saying so, and exit 0).
set -euo pipefail

usage() { # the comment above
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}
skip_ok=0
for arg in "$@"; do
    case "$arg" in
        --skip-without-engine) skip_ok=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "docker-smoke: unknown argument '$arg' (see --help)" >&2
            exit 2
            ;;
    esac
done
smoke_uid=${CLAB_SMOKE_UID:-4321}
if ! [[ "$smoke_uid" =~ ^[1-9][0-9]{0,8}$ ]] || [ "$smoke_uid" = 1000 ]; then
    echo "docker-smoke: CLAB_SMOKE_UID must be a uid other than 0 and 1000, not '$smoke_uid'" >&2
    exit 2
fi
wheels=${CLAB_WHEELS:-/opt/wheels}

cd "$(dirname "$0")/.."
start=$SECONDS
say() { printf 'docker-smoke [%3ds] %s\n' "$((SECONDS - start))" "$*"; }
fail() {
    echo "docker-smoke: FAILED: $*" >&2
    exit 1
}
skip() {
    echo "docker-smoke: skipped: $*"
    if [ "$skip_ok" = 1 ]; then exit 0; fi
    exit 77
}
is_root() { [ "$(id -u)" = 0 ]; }
apt_install() {
    is_root && command -v apt-get >/dev/null || return 1
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# ---- state for cleanup -------------------------------------------------------
tag=clab-smoke-$$
image=$tag:cpu
work=$(mktemp -d "${TMPDIR:-/tmp}/clab-smoke.XXXXXX")
ours=()         # images this run made (or pulled), removed at the end
dockerd_pid=""  # dockerd started here, stopped at the end
http_pid=""
compose=()
engine=0        # 1 once an engine answers
passed=0
images_before=""

cleanup() {
    local rc=$?
    set +e
    if [ "${#compose[@]}" -gt 0 ]; then
        "${compose[@]}" down --remove-orphans >/dev/null 2>&1
    fi
    if [ "$engine" = 1 ]; then
        # The files in the volumes belong to another uid: remove them as root in a container.
        if docker image inspect "$image" >/dev/null 2>&1; then
            docker run --rm --entrypoint rm -v "$work:/w" "$image" -rf /w/vol >/dev/null 2>&1
        fi
        for i in "$image" "${ours[@]}"; do docker rmi -f "$i" >/dev/null 2>&1; done
        # A failed build leaves its last layers untagged: remove the ones that are new.
        comm -13 <(echo "$images_before") <(docker images -aq --filter dangling=true | sort -u) |
            xargs -r "$(docker_bin)" rmi -f >/dev/null 2>&1
    fi
    [ -n "$http_pid" ] && kill "$http_pid" 2>/dev/null
    rm -rf "$work" 2>/dev/null
    if [ -n "$dockerd_pid" ]; then
        kill "$dockerd_pid" 2>/dev/null
        for _ in $(seq 30); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 1; done
    fi
    if [ "$passed" = 1 ]; then say "passed"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- 1. the engine -----------------------------------------------------------
# Another docker client (without the compose plugin) may come first in PATH:
# Debian's /usr/bin/docker matches Debian's engine; docker-compose serves where
# `docker compose` does not.
docker_bin() { if [ -x /usr/bin/docker ]; then echo /usr/bin/docker; else type -P docker || echo docker; fi; }
docker() { command "$(docker_bin)" "$@"; }
if ! docker info >/dev/null 2>&1; then
    if ! is_root; then
        skip "no Docker engine answers and only root may install or start one"
    fi
    if ! command -v dockerd >/dev/null; then
        say "installing Debian's docker.io"
        apt_install docker.io docker-compose || skip "no Docker engine, and apt-get could not install docker.io"
    fi
    say "starting dockerd"
    dockerd >"$work/dockerd.log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$dockerd_pid" 2>/dev/null || break
        sleep 1
    done
    if ! docker info >/dev/null 2>&1; then
        skip "dockerd would not start: $(tail -n 1 "$work/dockerd.log")"
    fi
fi
if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null || apt_install docker-compose; then
    compose_cmd=(docker-compose)
else
    fail "neither \`docker compose\` nor docker-compose is installed"
fi
images_before=$(docker images -aq | sort -u)
engine=1
say "engine $(docker version --format '{{.Server.Version}}'), ${compose_cmd[*]}"

# ---- 2. the base images ------------------------------------------------------
arg_default() { sed -n "s/^ARG $1=//p" docker/Dockerfile; }
python_image=$(arg_default PYTHON_IMAGE)
uv_image=$(arg_default UV_IMAGE)
if [ -z "$python_image" ] || [ -z "$uv_image" ]; then
    fail "docker/Dockerfile lacks ARG PYTHON_IMAGE= or ARG UV_IMAGE="
fi

have_or_pull() {
    docker image inspect "$1" >/dev/null 2>&1 && return 0
    if timeout 300 "$(docker_bin)" pull -q "$1" >/dev/null 2>&1; then
        ours+=("$1")
        return 0
    fi
    return 1
}

if ! have_or_pull "$python_image"; then
    say "$python_image cannot be pulled: building a stand-in (Debian bookworm with its python3)"
    is_root || fail "a stand-in for $python_image needs root (mmdebstrap)"
    command -v mmdebstrap >/dev/null || apt_install mmdebstrap || fail "cannot install mmdebstrap"
    certs=/etc/ssl/certs/ca-certificates.crt
    hooks=()
    changes=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')
    if [ -f "$certs" ]; then # this machine's CA bundle, for HTTPS to the registries in the build
        hooks=(--customize-hook='mkdir -p "$1/etc/ssl/certs"' --customize-hook="copy-in $certs /etc/ssl/certs")
        changes+=(--change "ENV SSL_CERT_FILE=$certs PIP_CERT=$certs REQUESTS_CA_BUNDLE=$certs")
    fi
    python_image=$tag-python:3.11-bookworm
    mmdebstrap --quiet --variant=minbase --include=python3 "${hooks[@]}" bookworm "$work/rootfs.tar" \
        http://deb.debian.org/debian 2>"$work/mmdebstrap.log" ||
        { tail -n 20 "$work/mmdebstrap.log" >&2; fail "mmdebstrap"; }
    docker import "${changes[@]}" "$work/rootfs.tar" "$python_image" >/dev/null
    ours+=("$python_image")
    rm -f "$work/rootfs.tar"
fi

if ! have_or_pull "$uv_image"; then
    uv_version=${uv_image##*:}
    say "$uv_image cannot be pulled: building a stand-in from PyPI's uv $uv_version wheel"
    mkdir -p "$work/uv"
    python3 - "$uv_version" "$work/uv" <<'EOF' || fail "uv $uv_version from PyPI"
import hashlib, io, json, sys, urllib.request, zipfile
version, out = sys.argv[1], sys.argv[2]
want = f"uv-{version}-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
req = urllib.request.Request(  # the simple API (PEP 691), which mirrors serve too
    "https://pypi.org/simple/uv/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
)
with urllib.request.urlopen(req, timeout=60) as r:
    (file,) = [f for f in json.load(r)["files"] if f["filename"] == want]
with urllib.request.urlopen(file["url"], timeout=300) as r:
    data = r.read()
if hashlib.sha256(data).hexdigest() != file["hashes"]["sha256"]:
    sys.exit(f"{want}: sha256 differs from the index's")
wheel = zipfile.ZipFile(io.BytesIO(data))
for name in ("uv", "uvx"):
    with open(f"{out}/{name}", "wb") as f:
        f.write(wheel.read(f"uv-{version}.data/scripts/{name}"))
EOF
    chmod 755 "$work/uv/uv" "$work/uv/uvx"
    uv_image=$tag-uv:$uv_version
    printf 'FROM scratch\nCOPY uv uvx /\n' | DOCKER_BUILDKIT=0 docker build -q -t "$uv_image" -f - "$work/uv" >/dev/null
    ours+=("$uv_image")
fi

# ---- 3. the CPU image --------------------------------------------------------
torch_version=$(awk '/^name = "torch"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' uv.lock)
[ -n "$torch_version" ] || fail "uv.lock has no torch"
build_args=(--build-arg VARIANT=cpu --build-arg "PYTHON_IMAGE=$python_image" --build-arg "UV_IMAGE=$uv_image")
wheel=$(compgen -G "$wheels/torch-$torch_version+cpu-cp311-cp311-manylinux*_x86_64.whl" | head -n 1 || true)
if [ -n "${TORCH_CPU_INDEX:-}" ]; then
    build_args+=(--build-arg "TORCH_CPU_INDEX=$TORCH_CPU_INDEX")
    torch_from=$TORCH_CPU_INDEX
elif [ -n "$wheel" ]; then
    # A one-package index over the local wheel, served to the build on the host's network.
    name=$(basename "$wheel")
    mkdir -p "$work/index/torch"
    ln -s "$wheel" "$work/index/torch/$name"
    sha=$(sha256sum "$wheel" | cut -d' ' -f1)
    printf '<a href="%s#sha256=%s">%s</a>\n' "${name//+/%2B}" "$sha" "$name" >"$work/index/torch/index.html"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    python3 -m http.server --bind 127.0.0.1 --directory "$work/index" "$port" >/dev/null 2>&1 &
    http_pid=$!
    build_args+=(--network host --build-arg "TORCH_CPU_INDEX=http://127.0.0.1:$port/")
    torch_from=$wheel
else
    torch_from="the Dockerfile's TORCH_CPU_INDEX"
fi
say "building $image (VARIANT=cpu; torch $torch_version+cpu from $torch_from)"
build_start=$SECONDS
if ! DOCKER_BUILDKIT=0 docker build --force-rm -f docker/Dockerfile -t "$image" "${build_args[@]}" . \
    >"$work/build.log" 2>&1; then
    tail -n 40 "$work/build.log" >&2
    fail "docker build"
fi
build_s=$((SECONDS - build_start))
size=$(docker image inspect -f '{{.Size}}' "$image")
base_size=$(docker image inspect -f '{{.Size}}' "$python_image")
say "built in ${build_s} s: $((size / 1000000)) MB (its base $python_image: $((base_size / 1000000)) MB)"
# The CPU image is a fraction of the GPU one (about 11.8 GB): torch's CPU build only.
[ "$size" -lt 4000000000 ] || fail "the CPU image is $size bytes, above 4 GB"

# ---- 4. the services, through Compose, on volumes owned by another uid -------
# No GPU here: the services' GPU reservations are left out of a copy of the file.
awk '/^    deploy:/ { skip = 1; next } skip && /^( |  |   |    )?[^ ]/ { skip = 0 } !skip' \
    docker-compose.yml >"$work/compose.yml"
grep -q nvidia "$work/compose.yml" && fail "GPU reservations left in the smoke's Compose file"
mkdir -p "$work/vol/models"
cp -r services "$work/vol/services"
for v in data checkpoints metrics logs plots; do mkdir -p "$work/vol/$v"; done
export CLAB_IMAGE=$image HF_HUB_OFFLINE=1
for m in QWEN15B QWEN3B TINYLLAMA QWEN05B_INSTRUCT; do export "CLAB_${m}_DIR=$work/vol/models"; done
export HF_HOME=$work/vol/models/hf
compose=("${compose_cmd[@]}" -p "$tag" -f "$work/compose.yml" --project-directory "$work/vol")
"${compose[@]}" config -q || fail "the smoke's Compose file"
[ "$("${compose[@]}" config --services)" = "$("${compose_cmd[@]}" -f docker-compose.yml config --services)" ] ||
    fail "the smoke's Compose file lost services"
docker run --rm --entrypoint chown -v "$work/vol:/w" "$image" -R "$smoke_uid:$smoke_uid" /w ||
    fail "chown of the volumes"

service() { # service NAME ARGS...: `compose run` as a user would, output kept for a failure
    local name=$1 t=$SECONDS
    shift
    if ! "${compose[@]}" run --rm -T "$name" "$@" >"$work/$name.log" 2>&1; then
        tail -n 40 "$work/$name.log" >&2
        fail "$name: ${*:1:2}"
    fi
    say "$name: ok ($((SECONDS - t)) s)"
}
check() { # check FILE...: each exists, JSON files parse
    local f
    for f in "$@"; do
        [ -s "$work/vol/$f" ] || fail "missing: $f"
        case "$f" in *.json) python3 -m json.tool "$work/vol/$f" >/dev/null || fail "not JSON: $f" ;; esac
    done
}

say "clab validate, every spec"
"${compose[@]}" run --rm -T --entrypoint sh data-generator -c \
    'for f in services/*.yaml; do clab validate "$f" >/dev/null || exit 1; done; ls services/*.yaml | wc -l' \
    >"$work/validate.log" 2>&1 || { cat "$work/validate.log" >&2; fail "clab validate"; }
n_specs=$(find services -maxdepth 1 -name '*.yaml' | wc -l)
[ "$(tail -n 1 "$work/validate.log")" = "$n_specs" ] || fail "clab validate: not every spec checked"

ranges=('ranges.count=[3,3]' 'ranges.number=[1,20]' 'ranges.target=[1,200]')
sets() { local a; for a in "$@"; do printf -- '--set\n%s\n' "$a"; done; }
mapfile -t data_sets < <(sets train_size=200 test_size=16 workers=1 "${ranges[@]}")
service data-generator run services/data-generator.yaml "${data_sets[@]}"
check data/continual/manifest.json
mapfile -t dummy_sets < <(sets train_size=200 test_size=16 pool.workers=1 "${ranges[@]/#/pool.}")
service tinyzero-dummy-generator run services/tinyzero-dummy-generator.yaml "${dummy_sets[@]}"
check data/dummy_tinyzero/manifest.json

# clab demo's tiny model (shared/clab/demo.py), two groups, two PPO steps each.
mapfile -t train_sets < <(sets name=smoke 'data.groups=[0,1]' model.preset=tiny model.name_or_path=null \
    model.hidden_size=64 model.layers=2 model.split_digits=true \
    resources.num_workers=1 resources.use_gpu=false rollout.engine=hf \
    rollout.max_prompt_length=160 rollout.max_response_length=20 \
    batch.train=8 batch.val=16 batch.mini=8 batch.micro=8 rounds=1 max_steps_per_stage=2 \
    save_steps=2 warmup.steps=4 warmup.batch_size=16)
service curriculum-trainer-3b run services/curriculum-trainer-3b.yaml "${train_sets[@]}"
check checkpoints/smoke/{initial,r0-g0,r0-g1}/COMPLETE metrics/smoke/train.jsonl
service evaluator run services/evaluator.yaml --set use_gpu=false --set test_size=8
check metrics/smoke/summary.json metrics/smoke/eval.parquet
service plotter run services/plotter.yaml
check plots/index.html
grep -q smoke "$work/vol/plots/index.html" || fail "plots/index.html does not show the run"

others=$(find "$work/vol" ! -uid "$smoke_uid" -printf '%u:%g %p\n' | head -n 5)
[ -z "$others" ] || fail "files not owned by uid $smoke_uid: $others"
say "every file in the volumes belongs to uid $smoke_uid"

# The entrypoint's other cases: no volume, a volume owned by root, owners that differ.
as() { docker run --rm --entrypoint clab-entrypoint "$@" "$image" id -u 2>&1; }
docker run --rm "$image" >/dev/null || fail "the image's default command (clab --help)"
[ "$(as)" = 1000 ] || fail "without a volume, clab-entrypoint did not run as clab (1000)"
docker run --rm --entrypoint mkdir -v "$work:/w" "$image" /w/root-owned
[ "$(as -v "$work/root-owned:/app/data")" = 0 ] ||
    fail "with a volume owned by root, clab-entrypoint did not stay root"
out=$(as -v "$work/root-owned:/app/data" -v "$work/vol/logs:/app/logs") && fail "owners differ, yet: $out"
[[ "$out" == *"different owners"* ]] || fail "owners differ, yet: $out"
say "clab-entrypoint: no volume -> uid 1000, root's -> 0, two owners -> refused"
passed=1
