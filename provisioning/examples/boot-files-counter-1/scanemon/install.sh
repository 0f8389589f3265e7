#!/bin/bash
# Scanemon first-boot installer for counter-1 (Shop counter 1), rendered by scanemon-provision.
# Runs once as root, from cloud-init (user-data runcmd) or firstrun.sh. Idempotent: safe to re-run.
set -euo pipefail
SRC="$(dirname "$(readlink -f "$0")")"
VENV=/opt/scanemon/venv
exec > >(tee -a /var/log/scanemon-firstboot.log) 2>&1
echo "scanemon first boot: $(date -Is) device=counter-1"

# 1. System packages: picamera2/libcamera, OpenCV and numpy from Debian (see requirements-device.txt).
if ! python3 -c 'import picamera2, cv2, numpy' 2>/dev/null; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    python3-venv python3-picamera2 python3-opencv python3-numpy
fi

# 2. Service user and folders.
id scanemon >/dev/null 2>&1 || useradd --system --home-dir /var/lib/scanemon --shell /usr/sbin/nologin scanemon
usermod -aG video,render scanemon || true
install -d -m 0750 -o scanemon -g scanemon /var/lib/scanemon
install -d -m 0750 -o root -g scanemon /etc/scanemon

# 3. The venv sees the system's picamera2/cv2/numpy; our pinned wheels go on top, without dependencies.
[ -x "$VENV/bin/python" ] || python3 -m venv --system-site-packages "$VENV"
if [ -d "$SRC/wheels" ]; then
  PIP_SOURCE=(--no-index --find-links "$SRC/wheels")
else
  PIP_SOURCE=(--index-url "https://pypi.org/simple")
fi
"$VENV/bin/pip" install --no-deps --disable-pip-version-check "${PIP_SOURCE[@]}" -r "$SRC/requirements-device.txt"
"$VENV/bin/python" -c 'import device.bundle, device.updater, picamera2, cv2'

# 4. Configuration (secrets: root:scanemon 0640) and the fleet's public key.
install -m 0640 -o root -g scanemon "$SRC/device.yaml" /etc/scanemon/device.yaml
install -m 0640 -o root -g scanemon "$SRC/updater.yaml" /etc/scanemon/updater.yaml
install -m 0644 "$SRC/fleet_signing.pub" /etc/scanemon/fleet_signing.pub
[ -f "$SRC/ca.crt" ] && install -m 0644 "$SRC/ca.crt" /etc/scanemon/ca.crt
"$VENV/bin/python" -c 'import sys; from device.config import load_config; load_config(sys.argv[1])' /etc/scanemon/device.yaml

# 5. systemd units.
install -m 0644 "$SRC/scanemon-device.service" "$SRC/scanemon-updater.service" /etc/systemd/system/
systemctl daemon-reload
systemctl enable scanemon-updater.service scanemon-device.service

# 6. The boot partition is FAT and readable by anyone holding the SD card: remove the secrets from it.
shred -u "$SRC/device.yaml" "$SRC/updater.yaml" 2>/dev/null || rm -f "$SRC/device.yaml" "$SRC/updater.yaml"
touch /etc/scanemon/.provisioned
systemctl start scanemon-updater.service scanemon-device.service || true
echo "scanemon first boot done: $(date -Is)"
