"""cloud: VM templates → deployed VMs on a cloud core (embedded QEMU, libvirt, OpenNebula)."""
