"""Fleet provisioning: signing keys, device credentials, broker config/ACLs, first-boot files (scanemon-provision)."""
