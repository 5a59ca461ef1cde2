"""CIFAR-10 experiments for jaxnorm: data pipeline, augmentation and training scripts."""
