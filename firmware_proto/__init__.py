"""The over-the-air protocol between gateway and label, sans-IO: bytes in, frames out."""
