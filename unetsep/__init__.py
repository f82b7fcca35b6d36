"""unetsep: real-time drum separation with a 1-D convolutional U-Net."""

__version__ = "0.1.0"
