"""Models: the model card, model folders, architectures and their blocks."""
