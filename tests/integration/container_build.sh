#!/usr/bin/env bash
# Build the pyproxy image without a Docker engine (DESIGN.md §7): a Debian bookworm base made with
# debootstrap and imported into buildah's storage, then `buildah bud --isolation=chroot`.
#
#   tests/integration/container_build.sh base            # localhost/bookworm-python (cached)
#   tests/integration/container_build.sh image [TAG]     # base + the Dockerfile, TAG default
#                                                        # localhost/pyproxy
#
# Needs root, buildah and debootstrap. The base is rebuilt at most once a day (debootstrap takes
# minutes): the image carries its date as a label and the root file system is kept as a tarball
# in $PYPROXY_CONTAINER_CACHE (default /var/tmp/pyproxy-container-cache) in case buildah's storage
# is reset. The host's pip index settings (pip config and PIP_* variables) are passed to the
# build as build args, with local index directories and the CA bundle mounted read-only for the
# RUN steps only, so the build reaches the same package index as pip here without any host name
# written into the repository.
#
# Environment: DEBIAN_MIRROR (default: the host's bookworm mirror from its apt sources),
# BASE_IMAGE (default localhost/bookworm-python), BUILDAH_LAYERS=true to cache
# build layers between runs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
suite=bookworm
base_image=${BASE_IMAGE:-localhost/bookworm-python}
cache=${PYPROXY_CONTAINER_CACHE:-/var/tmp/pyproxy-container-cache}
key="$suite-$(date -u +%Y%m%d)"

log() { printf '%s container_build: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

debian_mirror() {
	if [[ -n ${DEBIAN_MIRROR:-} ]]; then
		echo "$DEBIAN_MIRROR"
		return
	fi
	local f uri
	# deb822 sources: the URIs of a stanza whose Suites include $suite and that is not security.
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -f $f ]] || continue
		uri=$(awk -v suite="$suite" '
			/^URIs:/ { uri = $2 }
			/^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) found = 1 }
			/^$/ { if (found && uri !~ /security/) { print uri; exit } uri = ""; found = 0 }
			END { if (found && uri !~ /security/) print uri }' "$f" | head -n 1)
		if [[ -n $uri ]]; then
			echo "$uri"
			return
		fi
	done
	# One-line sources: "deb [options] URI SUITE COMPONENTS".
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[[ -f $f ]] || continue
		uri=$(awk -v suite="$suite" '$1 == "deb" {
			for (i = 2; i < NF; i++) if ($(i + 1) == suite && $i !~ /^\[/ && $i !~ /security/) {
				print $i; exit } }' "$f")
		if [[ -n $uri ]]; then
			echo "$uri"
			return
		fi
	done
	echo "no Debian mirror found in the apt sources" >&2
	return 1
}

have_base() {
	local label
	label=$(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "org.pyproxy.base-key"}}' \
		"$base_image" 2>/dev/null) || return 1
	[[ $label == *"$key"* ]]
}

make_base() {
	mkdir -p "$cache"
	# One builder at a time: parallel test runs would otherwise debootstrap twice.
	exec 9>"$cache/lock"
	flock -w 1200 9
	if have_base; then
		log "$base_image is current ($key)"
		return
	fi
	local tarball="$cache/$key-python.tar"
	if [[ ! -s $tarball ]]; then
		local mirror rootfs
		mirror=$(debian_mirror)
		rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
		log "debootstrap $suite from $mirror (a few minutes)"
		debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
			"$suite" "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 || {
			tail -n 20 "$cache/debootstrap.log" >&2
			rm -rf "$rootfs"
			return 1
		}
		# The downloaded .debs and package lists are not needed in an image.
		rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
		rm -f "$cache"/*-python.tar
		tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
		mv "$tarball.tmp" "$tarball"
		rm -rf "$rootfs"
	fi
	log "importing $tarball as $base_image"
	local ctr
	ctr=$(buildah from scratch)
	buildah add "$ctr" "$tarball" / >/dev/null
	buildah config --label "org.pyproxy.base-key=$key" --cmd /bin/bash \
		--env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
	buildah commit --rm --quiet "$ctr" "$base_image" >/dev/null
}

# Effective pip setting: the PIP_* variable, else `pip config` (site, user, global files).
pip_setting() {
	local env_name=$1 config_name=$2 value
	local python=${PYTHON:-$repo/.venv/bin/python}
	[[ -x $python ]] || python=python3
	value=${!env_name:-}
	if [[ -z $value ]]; then
		value=$("$python" -m pip config get "global.$config_name" 2>/dev/null || true)
	fi
	echo "$value"
}

build_image() {
	local tag=$1
	local -a args=(--isolation=chroot --format docker --build-arg "BASE=$base_image")
	local -a mounts=()
	local name value url kept path
	# Index URLs: http(s) ones pass as they are; file:// ones are mounted at the same path.
	for name in INDEX_URL:index-url EXTRA_INDEX_URL:extra-index-url; do
		value=$(pip_setting "PIP_${name%%:*}" "${name#*:}")
		kept=()
		for url in $value; do
			if [[ $url == file://* ]]; then
				path=${url#file://}
				path=${path%/}
				[[ -d $path ]] || continue
				# A local mirror's simple/ pages link to files beside it (../files/…).
				[[ ${path##*/} != simple ]] || path=${path%/*}
				mounts+=(--volume "$path:$path:ro")
			fi
			kept+=("$url")
		done
		if ((${#kept[@]})); then
			args+=(--build-arg "PIP_${name%%:*}=${kept[*]}")
		fi
	done
	value=$(pip_setting PIP_TRUSTED_HOST trusted-host)
	[[ -z $value ]] || args+=(--build-arg "PIP_TRUSTED_HOST=$value")
	value=$(pip_setting PIP_DEFAULT_TIMEOUT timeout)
	[[ -z $value ]] || args+=(--build-arg "PIP_DEFAULT_TIMEOUT=$value")
	# A CA bundle the host's pip trusts (e.g. an egress proxy's) is needed by the image's pip too.
	value=$(pip_setting PIP_CERT cert)
	if [[ -n $value && -f $value ]]; then
		mounts+=(--volume "$value:/run/pyproxy-build/pip-cert.pem:ro")
		args+=(--build-arg "PIP_CERT=/run/pyproxy-build/pip-cert.pem")
	fi
	log "buildah bud -t $tag (base $base_image)"
	buildah bud "${args[@]}" "${mounts[@]}" -t "$tag" -f "$repo/Dockerfile" "$repo"
}

cmd=${1:-image}
case $cmd in
base)
	make_base
	;;
image)
	make_base
	build_image "${2:-localhost/pyproxy}"
	;;
*)
	echo "usage: $0 base | image [TAG]" >&2
	exit 2
	;;
esac
