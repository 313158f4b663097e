"""eslserver: the electronic shelf label server and gateway."""

__version__ = "0.1.0"
