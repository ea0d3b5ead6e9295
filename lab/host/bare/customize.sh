#!/usr/bin/env bash
# mmdebstrap customize hook for the BARE lab host image: $1 is the root filesystem being built.
set -euo pipefail
root="$1"
img="${LAB_HOST_IMAGE_DIR:?}" bare="${LAB_RECIPE_DIR:?}"

# Simulated NVIDIA driver and container toolkit tools, as on the GPU lab host. A server with
# the NVIDIA container toolkit installed before Docker has /etc/docker/daemon.json naming the
# nvidia runtime (`nvidia-ctk runtime configure`); the program's mirror merge keeps it.
# Lab-only: the systemd cgroup driver puts inner containers under this host's own cgroup
# (docker-<id>.scope in its system.slice), so what they use is charged to the host container;
# Debian's default (cgroupfs) would put them beside it, in the machine's /docker.
install -m 0755 "$img/fake_nvidia_smi.py" "$root/usr/bin/nvidia-smi"
install -m 0755 "$img/fake_nvidia_hook.py" "$root/usr/bin/nvidia-container-runtime-hook"
install -m 0755 "$img/fake_nvidia_runtime.py" "$root/usr/bin/nvidia-container-runtime"
install -d -m 0755 "$root/etc/lab" "$root/etc/docker"
install -m 0644 "$bare/daemon.json" "$root/etc/docker/daemon.json"
install -m 0644 "$img/sshd-lab.conf" "$root/etc/ssh/sshd_config.d/lab.conf"
install -m 0755 "$img/lab_devd.py" "$root/usr/local/sbin/lab-devd"

# Boot units standing in for what a container cannot have (README.md here): the per-host
# identity, udev's device nodes and links, and the fstab block-device mounts.
install -m 0755 "$bare/lab-firstboot" "$root/usr/local/sbin/lab-firstboot"
install -m 0755 "$bare/lab-devnodes" "$root/usr/local/sbin/lab-devnodes"
install -m 0644 "$bare/lab-firstboot.service" "$bare/lab-devnodes.service" \
  "$bare/lab-fstab.service" "$bare/lab-devd.service" "$root/etc/systemd/system/"
install -d "$root/etc/systemd/system/sysinit.target.wants" \
  "$root/etc/systemd/system/local-fs-pre.target.wants" \
  "$root/etc/systemd/system/local-fs.target.wants" \
  "$root/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/lab-firstboot.service "$root/etc/systemd/system/sysinit.target.wants/"
ln -sf /etc/systemd/system/lab-devnodes.service "$root/etc/systemd/system/local-fs-pre.target.wants/"
ln -sf /etc/systemd/system/lab-fstab.service "$root/etc/systemd/system/local-fs.target.wants/"
ln -sf /etc/systemd/system/lab-devd.service "$root/etc/systemd/system/multi-user.target.wants/"

# Every host generates its own SSH host key (lab-firstboot) and machine id (systemd).
rm -f "$root"/etc/ssh/ssh_host_*
install -d -m 0700 "$root/root/.ssh"
: >"$root/etc/machine-id"
# The operator's login user, for docker.docker_group_user (the manual adds it to `docker`).
chroot "$root" useradd --create-home --shell /bin/bash ops

# Units that cannot work in a container (no console, no udevd, no kernel modules to load).
for u in systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
         systemd-udev-trigger.service systemd-modules-load.service getty@tty1.service \
         console-getty.service systemd-remount-fs.service sys-kernel-config.mount \
         sys-kernel-debug.mount sys-kernel-tracing.mount dev-hugepages.mount \
         systemd-journald-audit.socket; do
  ln -sf /dev/null "$root/etc/systemd/system/$u"
done
