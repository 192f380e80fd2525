"""augment: GAN data augmentation for semantic segmentation, distributed with Ray.

`augment.open_dataset(path)` opens a dataset folder for one's own code (augment.api); it is imported on first use,
so `import augment` (and the CLI) stays light.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "open_dataset":
        from augment.api import open_dataset

        return open_dataset
    raise AttributeError(f"module 'augment' has no attribute {name!r}")


__all__ = ["__version__", "open_dataset"]
