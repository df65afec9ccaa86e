"""PID 1 of the emulated host: a busybox shell script.

It loads the modules, stops at the snapshot point when vmrun may save the host there
(`vmrun.snapshot` on its command line; runner/emulated/snapshot.py), mounts the host's /
read-only over 9p (tag `host`) and the job's scratch directory read-write (tag `scratch`),
runs `/scratch/mounts.sh` (written by vmrun:
the writable directories, mounted at their own paths), then runs `/scratch/job.sh` chrooted
into the host's files with stdout and stderr on the virtio-serial ports `stdout` and
`stderr`, and stdin on `stdin` (/dev/null without one; inbound_ports.py), while it rewrites
`/scratch/heartbeat` every 5 s (vmrun takes a host whose heartbeat stops for
`Settings.hung_after_s` for hung). It writes the exit status to `/scratch/status` and
powers off. Anything that goes wrong before the job runs leaves no status file: vmrun
reports that as its own failure, with the console log.
"""

HOST_INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /host /scratch /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "vmrun-host: $*" > /dev/ttyS0; }
fail() { say "$*"; sync; poweroff -f; }
# vmrun asks for huge pages for guest RAM (a memfd: shmem), as QEMU does; allow them on
# request, as a host set up for VMs does. Measured: the guest kernel's boot 4 s shorter.
echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled || say "no shmem huge pages"
for m in $(cat /etc/modules); do insmod /lib/modules/$m.ko || say "cannot load $m"; done
ports() {
  for port in /sys/class/virtio-ports/*; do
    eval "port_$(cat $port/name)=/dev/${port##*/}"
  done
}
# The snapshot point (runner/emulated/snapshot.py): vmrun may save this host here and start
# later runs from here. What differs from run to run (files, clock, randomness) comes after.
if grep -qw vmrun.snapshot /proc/cmdline; then
  # The waiting vmrun inside (runner/emulated/waiting_inside.py), where the initramfs has it:
  # it imports before the snapshot point, once, what every run would import.
  if [ -x /vmrun-inside/start ]; then
    /vmrun-inside/start < /dev/null > /dev/ttyS0 2>&1 &
    inside=$!
    tries=0
    until [ -e /run/vmrun-inside/ready ]; do
      tries=$((tries + 1))
      if [ $tries -ge 1200 ] || ! kill -0 $inside 2>/dev/null; then
        say "the waiting vmrun inside did not start"; inside=; break
      fi
      sleep 0.1
    done
  fi
  tries=0
  until ports; [ -c "$port_go" ]; do  # the last port: the others are there before it
    tries=$((tries + 1))
    [ $tries -lt 200 ] || fail "no go port"
    sleep 0.05
  done
  [ -c "$port_events" ] && echo "emulated host booted" > "$port_events"
  echo ready > "$port_go"
  read -r now entropy < "$port_go" || fail "vmrun did not say go"
  date -s "@$now" > /dev/null || say "cannot set the clock"
  echo "$entropy" > /dev/urandom
fi
P9=trans=virtio,version=9p2000.L,msize=262144
# The host's / is read-only here and nobody changes it while a job runs: cache=loose lets
# the guest keep its files and metadata, instead of asking QEMU at each stat and read (most of
# a Python program's start, its imports, is that).
mount -t 9p -o $P9,ro,cache=loose host /host || fail "cannot mount the host's files"
mount -t 9p -o $P9 scratch /scratch || fail "cannot mount the scratch directory"
. /scratch/mounts.sh || fail "cannot mount the writable directories"
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/pts /host/dev/shm 2>/dev/null
mount -t devpts devpts /host/dev/pts
mount -t tmpfs shm /host/dev/shm
mount -t tmpfs run /host/run
ports
for name in $UNUSED_PORTS; do eval "port_$name="; done
[ -c "$port_stdout" ] && [ -c "$port_stderr" ] || fail "no stdout/stderr ports"
[ -e /dev/kvm ] || say "no /dev/kvm (kvm-amd did not load)"
# Phases for `vmrun run --timings`, stamped by the vmrun outside as they arrive.
if [ -c "$port_events" ]; then
  export VMRUN_TIMINGS_EVENTS="$port_events"
  [ -c "$port_go" ] || echo "emulated host booted" > "$port_events"
fi
# The outer terminal's new sizes, for the vmrun inside (runner/terminal.py).
[ -c "$port_winsize" ] && export VMRUN_WINSIZE_PORT="$port_winsize"
stdin=/dev/null
[ -c "$port_stdin" ] && stdin="$port_stdin"
# A heartbeat for vmrun, which otherwise cannot tell a locked-up kernel from a quiet job.
(while :; do date +%s > /scratch/heartbeat; sleep 5; done) &
# The waiting vmrun inside takes the job if it is there to read the request: a FIFO's writer
# waits for a reader, so not forever (it may have died).
if [ -n "$inside" ] && [ -e "/host${JOB%.sh}.json" ] && timeout 10 sh -c \
    'printf "%s\t%s\t%s\t%s\t%s\t%s\n" "$@" > /run/vmrun-inside/request' - \
    "${JOB%.sh}.json" "$stdin" "$port_stdout" "$port_stderr" \
    "${VMRUN_TIMINGS_EVENTS:--}" "${VMRUN_WINSIZE_PORT:--}"; then
  wait $inside
else
  chroot /host /bin/sh "$JOB" < "$stdin" > "$port_stdout" 2> "$port_stderr"
fi
echo $? > /scratch/status
sync
poweroff -f
"""
