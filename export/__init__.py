"""unetsep.export: Keras run -> ONNX / TFLite models, each checked against the Keras original."""
