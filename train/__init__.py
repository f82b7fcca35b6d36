"""unetsep.train: the default dataset renderer, the Keras U-Net and its training loop."""
