"""The image data a run trains on: found by each dataset's loader, decoded, checked, cached and split.

Modules, in the order data flows through them:
- `sources`: the loaders conf/data/*.yaml name (`loader: mnist_exp.data.sources:load_mnist`), and
  Keras' downloader;
- `formats`: the .npz, IDX and CSV decoders, and the shape and label checks;
- `cache`: decoded arrays kept as .npy files, so later runs skip decoding;
- `memory`: arrays aligned so TensorFlow reads them in place;
- `loading`: `load_dataset`, the offline fallback and the validation split.
numpy only: TensorFlow is imported only to download through Keras.
"""

from mnist_exp.data.formats import RawData, check_arrays
from mnist_exp.data.loading import Dataset, hold_out_validation, load_dataset, with_training_subset
from mnist_exp.data.memory import aligned
from mnist_exp.data.sources import OfflineError

__all__ = ["Dataset", "OfflineError", "RawData", "aligned", "check_arrays", "hold_out_validation", "load_dataset",
           "with_training_subset"]
