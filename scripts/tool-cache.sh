# shellcheck shell=bash
# Sourced by scripts/build-app.sh and scripts/setup-python.sh: a machine-wide, version-keyed
# cache of the tools they install, shared by every clone of the repository on this machine.
#
#   DIFFIT_TOOLS_CACHE  the cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/diffit-lora)
#
# Each entry is named after the tool and its version (wasm-bindgen-cli-0.2.130, binaryen-132.0.0,
# venv-<key>) and only ever appears complete: it is installed into a temporary directory beside
# it, checked, and renamed into place, so an interrupted install is never taken for a finished
# one. Installers of one entry take a lock (flock(1), when present) and check again under it, so
# two concurrent installers install once; without flock both install and the first rename wins.
# Removing the cache (or one entry) is always safe: what is missing is installed again.

DIFFIT_CACHE=${DIFFIT_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/diffit-lora}

# cache_install NAME CHECK INSTALL: makes $DIFFIT_CACHE/NAME a complete install, a directory.
#   CHECK DIR    succeeds, quietly, when DIR holds a complete, working install.
#   INSTALL DIR  installs into DIR, an empty directory renamed to NAME afterwards: what it
#                installs must work from wherever it is moved.
# An existing NAME that fails CHECK (its files damaged, say) is replaced.
cache_install() {
    "$2" "$DIFFIT_CACHE/$1" && return 0
    _cache_locked "$1" _cache_install_locked move "$@"
}

# cache_install_pinned NAME CHECK INSTALL: the same for an install that must not move once made
# (a Python venv records its own path in its scripts). It is made in a directory that stays
# where it is, .NAME.d.XXXXXX, and NAME is published as a symlink to it, renamed into place.
cache_install_pinned() {
    "$2" "$DIFFIT_CACHE/$1" && return 0
    _cache_locked "$1" _cache_install_locked link "$@"
}

# _cache_locked NAME CMD [ARGS...]: runs CMD in a subshell holding the lock for NAME (waiting for
# it); without flock(1), just runs it. The lock dies with its holder, however that ends.
_cache_locked() {
    local name=$1
    shift
    mkdir -p "$DIFFIT_CACHE/.locks"
    (
        # shellcheck disable=SC2030,SC2031 # read by the command run inside this subshell only
        _cache_have_lock=0
        if command -v flock >/dev/null; then
            exec 9>"$DIFFIT_CACHE/.locks/$name.lock"
            flock 9
            _cache_have_lock=1
        fi
        "$@"
    )
}

_cache_install_locked() {
    local mode=$1 name=$2 check=$3 install=$4
    local dest=$DIFFIT_CACHE/$name live=""
    # Another installer may have finished while this one waited for the lock.
    "$check" "$dest" && return 0
    # shellcheck disable=SC2031 # set by _cache_locked in the same subshell
    if [ "$_cache_have_lock" = 1 ]; then
        # Nobody else is installing NAME now: what lies beside it is left from killed installs.
        [ -L "$dest" ] && live=$(basename "$(readlink "$dest")")
        local stale
        for stale in "$DIFFIT_CACHE/.$name.tmp."* "$DIFFIT_CACHE/.$name.old."* "$DIFFIT_CACHE/.$name.d."*; do
            [ -e "$stale" ] || continue
            [ "$(basename "$stale")" = "$live" ] || rm -rf "$stale"
        done
    fi
    # Global, not local: the EXIT trap of this subshell reads it.
    if [ "$mode" = link ]; then
        _cache_tmp=$(mktemp -d "$DIFFIT_CACHE/.$name.d.XXXXXX")
    else
        _cache_tmp=$(mktemp -d "$DIFFIT_CACHE/.$name.tmp.XXXXXX")
    fi
    trap 'rm -rf "$_cache_tmp"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    chmod 755 "$_cache_tmp" # mktemp's 0700 would hide the tools from other users of the cache
    "$install" "$_cache_tmp"
    "$check" "$_cache_tmp" || {
        echo "tool-cache: $name does not work after installing it into $_cache_tmp" >&2
        return 1
    }
    local from=$_cache_tmp
    if [ "$mode" = link ]; then
        from=$(mktemp -u "$DIFFIT_CACHE/.$name.tmp.XXXXXX")
        ln -s "$(basename "$_cache_tmp")" "$from"
    fi
    if [ -d "$dest" ] && [ ! -L "$dest" ]; then
        # A broken directory entry: set it aside (one rename), then delete it.
        local old
        old=$(mktemp -u "$DIFFIT_CACHE/.$name.old.XXXXXX")
        mv -T "$dest" "$old" 2>/dev/null || true
        rm -rf "$old"
    fi
    # rename(2): atomic; over a symlink or a file it replaces it, over a directory that appeared
    # meanwhile (a concurrent installer without flock) it fails instead of nesting inside it.
    if mv -T "$from" "$dest" 2>/dev/null; then
        if [ "$mode" = link ]; then
            # Published: the trap must keep it; the broken install it replaced can go.
            [ -n "$live" ] && [ "$live" != "$(basename "$_cache_tmp")" ] && rm -rf "${DIFFIT_CACHE:?}/$live"
            _cache_tmp=""
        fi
    else
        [ "$mode" = link ] && rm -f "$from"
        "$check" "$dest" || {
            echo "tool-cache: could not move $from to $dest" >&2
            return 1
        }
    fi
    return 0
}
