"""unetsep.runtime: the deployable part (numpy, onnxruntime, soundfile, sounddevice, soxr only)."""
