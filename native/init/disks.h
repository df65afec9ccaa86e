/* The guest's disks by name: what udev would make, for an init without udev. */
#ifndef VMRUN_INIT_DISKS_H
#define VMRUN_INIT_DISKS_H

/* For each virtio disk (/sys/block/vd*) with a serial (vmrun's disk id), the links that
 * udev's persistent-storage rules make: /dev/disk/by-id/virtio-SERIAL to the disk and
 * virtio-SERIAL-partN to its partitions. A serial with characters udev would escape gets
 * no link. Returns the number of links made; problems are only said (a workload that does
 * not use the links must not fail for them). */
int link_disks_by_id(void (*say)(const char *fmt, ...));

#endif
