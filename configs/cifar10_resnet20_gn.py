"""ResNet-20 + GN (8 groups) on CIFAR-10, 8 devices × 16 images.

The GN paper's CIFAR-10 setting uses G = 8 on the 16/32/64-channel stages.
    python -m experiments.train --config configs/cifar10_resnet20_gn.py --workdir runs/gn
"""

from experiments.config import default_config


def get_config():
  config = default_config()
  config.norm = "gn"
  config.norm_kwargs.num_groups = 8
  config.num_devices = 8
  config.per_device_batch = 16
  config.epochs = 30
  return config
