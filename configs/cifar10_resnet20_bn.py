"""ResNet-20 + BN on CIFAR-10, 8 devices × 16 images (global batch 128).

The GN paper's protocol: BN statistics per device, not synchronised.
    python -m experiments.train --config configs/cifar10_resnet20_bn.py --workdir runs/bn
"""

from experiments.config import default_config


def get_config():
  config = default_config()
  config.norm = "bn"
  config.num_devices = 8
  config.per_device_batch = 16
  config.epochs = 30
  return config
