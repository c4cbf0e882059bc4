"""vit-autograder: grades the Vision Transformer (ViT) on CIFAR-10 assignment."""

__version__ = "0.1.0"
