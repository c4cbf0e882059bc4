"""Training: CIFAR-10 data, the fast harness, and the accuracy pass mark."""
