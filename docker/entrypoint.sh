#!/bin/sh
# clab-entrypoint COMMAND...: run COMMAND as the owner of the volumes it writes.
#
# Started as root (the image's default), it reads which folders under /app are
# mounted read-write (data/, checkpoints/, metrics/, logs/, plots/: whichever
# the service mounts) and runs COMMAND as their owner, so the files it writes
# belong to whoever owns the folders on the host, whatever their uid. Without
# such a mount it runs as the image's user clab (uid 1000); with folders owned
# by root (as Docker makes a missing one) it stays root. Folders with different
# owners stop it with a message (exit 2). Started as another user (`user:` in
# Compose, `docker run --user`), it runs COMMAND as that user, unchanged.
set -eu

if [ "$#" -eq 0 ]; then
    echo "usage: clab-entrypoint COMMAND [ARG...]" >&2
    exit 2
fi
if [ "$(id -u)" != 0 ]; then
    exec "$@"
fi

# /proc/self/mountinfo: field 5 is the mount point, field 6 its options (rw,... or ro,...).
mounts=$(awk '$5 ~ /^\/app\/[^\/]+$/ && $6 ~ /^rw(,|$)/ { print $5 }' /proc/self/mountinfo | sort -u)
owner=""
for dir in $mounts; do
    this=$(stat -c %u:%g "$dir")
    if [ -z "$owner" ]; then
        owner=$this
        first=$dir
    elif [ "${this%:*}" != "${owner%:*}" ]; then
        echo "clab-entrypoint: the folders mounted for writing have different owners:" \
            "$first is uid ${owner%:*}, $dir is uid ${this%:*}; give them one owner" \
            "(chown on the host) or choose the user with \`user:\` / --user" >&2
        exit 2
    fi
done
[ -n "$owner" ] || owner=$(id -u clab):$(id -g clab)

uid=${owner%:*}
gid=${owner#*:}
if [ "$uid" = 0 ]; then
    exec "$@"
fi
# A uid the image does not know gets a name (Python's getpass, Ray and torch
# look it up); HOME (/home/clab) is writable by any user.
if ! getent passwd "$uid" >/dev/null; then
    echo "clab-$uid:x:$uid:$gid:clab:$HOME:/bin/sh" >>/etc/passwd
fi
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"
