#!/bin/bash
# Scanemon first boot for counter-1, for images without cloud-init (Raspberry Pi Imager style).
# cmdline.txt gets: systemd.run=/boot/firmware/firstrun.sh systemd.run_success_action=reboot
#                   systemd.unit=kernel-command-line.target
# (scanemon-provision boot-files --patch-cmdline adds it); this script removes it again.
set +e
hostnamectl set-hostname scanemon-counter-1 2>/dev/null || echo scanemon-counter-1 > /etc/hostname
bash /boot/firmware/scanemon/install.sh
rm -f /boot/firmware/firstrun.sh
sed -i 's| systemd.run[^ ]*||g; s| systemd.unit=kernel-command-line.target||g' /boot/firmware/cmdline.txt
exit 0
