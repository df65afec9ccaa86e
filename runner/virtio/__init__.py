"""virtio: the queue engine's Python door (the transport and devices come on top of it)."""
