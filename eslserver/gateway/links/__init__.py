"""Links that carry protocol frames to labels (BLE, loopback, in-memory)."""
