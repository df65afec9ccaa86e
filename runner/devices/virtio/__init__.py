"""virtio devices on the virtio-mmio transport (mmio.py), each device's control side in its
own module; their data paths are native workers (native/virtio/)."""
