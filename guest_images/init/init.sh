#!/bin/sh
# wdfhil guest init (PID 1 of the initramfs; busybox sh).
#
# Brings up what the orchestrator needs and nothing else: the kernel file
# systems, the NIC's modules (in dependency order, listed by the image
# builder), eth0 with the address of QEMU's user-mode network, the command
# relay on the second serial port, and dropbear on the SSH port. It prints
# the ready marker on the console only once the relay waits for commands and
# dropbear LISTENS (hostfwd accepts connections before that), then stays
# alive reaping orphans; QEMU ends the guest. On a failure it prints
# "WDFHIL-INIT-FAILED: <why>" so the host need not wait for a timeout.
# Settings (WDFHIL_*) come from /etc/wdfhil/image.conf, written by the builder.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
umask 022

failed() {
	echo "WDFHIL-INIT-FAILED: $*"
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null   # already there if the kernel mounted it
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
ln -sf /proc/self/fd /dev/fd

. /etc/wdfhil/image.conf

while read -r module; do
	[ -n "$module" ] || continue
	insmod "$module" || failed "insmod $module"
done < /etc/wdfhil/boot-modules

hostname wdfhil
ip link set lo up

# virtio_net registers eth0 while insmod runs; wait a little in case probing is deferred.
tries=0
while [ ! -e /sys/class/net/eth0 ] && [ $tries -lt 200 ]; do
	usleep 10000
	tries=$((tries + 1))
done
if [ -e /sys/class/net/eth0 ]; then
	ip addr add "$WDFHIL_ADDRESS" dev eth0 &&
		ip link set eth0 up &&
		ip route add default via "$WDFHIL_GATEWAY" ||
		failed "configuring eth0"
else
	failed "no eth0 (is the NIC a virtio-net-pci?)"
fi

# The host's command channel (wdfhil-agent relay, relay.c): in a saved guest it is
# already waiting on its serial port, so a restored guest runs commands without an
# SSH login. Without the host's second serial port it cannot open the port and ends;
# the host then uses SSH (it adds the port only for images that have the relay).
rm -f "$WDFHIL_RELAY_READY"
"$WDFHIL_AGENT" relay "$WDFHIL_RELAY_TTY" "$WDFHIL_RELAY_READY" 2>>/var/log/wdfhil-relay.log &
relay=$!

# -F foreground (a child of init), -E log to stderr (kept in a file, not the
# console), -s no password logins; the key is the image's pinned host key.
dropbear -F -E -s -p "$WDFHIL_SSH_PORT" -r "$WDFHIL_HOST_KEY" 2>>/var/log/dropbear.log &

# Whether dropbear listens, with shell builtins only: each grep was a fork and
# an exec, ~10 ms of the guest's single vCPU under TCG, while dropbear starts.
port=$(printf '%04X' "$WDFHIL_SSH_PORT")
listening() {
	for table in /proc/net/tcp /proc/net/tcp6; do
		[ -r "$table" ] || continue
		while read -r _ local _ state _; do
			[ "$state" = 0A ] && [ "${local##*:}" = "$port" ] && return 0
		done < "$table"
	done
	return 1
}
relay_settled() {
	[ -e "$WDFHIL_RELAY_READY" ] || ! kill -0 "$relay" 2>/dev/null
}
tries=0
until listening && relay_settled; do
	tries=$((tries + 1))
	if [ $tries -gt 3000 ]; then
		if relay_settled; then
			failed "dropbear is not listening on port $WDFHIL_SSH_PORT"
			cat /var/log/dropbear.log
		else
			failed "the command relay did not open $WDFHIL_RELAY_TTY"
			cat /var/log/wdfhil-relay.log
		fi
		break
	fi
	usleep 10000
done
[ $tries -le 3000 ] && echo "$WDFHIL_READY_MARKER"

# PID 1 must never exit; `wait` also reaps orphans that are reparented to it.
while :; do
	sleep 3600 &
	wait
done
