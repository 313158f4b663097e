"""Simulated labels and store radios, built on the label side of `firmware_proto`."""
