"""Training the retrieval network on gtgen labels (MIRorR sec. 4): data, losses, loop, checkpoints."""
