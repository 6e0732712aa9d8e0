"""vitgender: ViT image classifiers (HF format) from checkpoint to phone, browser and server.

>>> import vitgender
>>> clf = vitgender.load_classifier()          # the embedded female/male model
>>> clf.classify(["face.jpg"])                 # [[{"label": "female", "score": 0.97}, ...]]
"""

import logging
import os

__version__ = "0.1.0"

# Set once, before anything imports transformers or TensorFlow: transformers would otherwise
# import TensorFlow (slow, unused: PyTorch is the reference), and TensorFlow's C++ logging
# would fill stderr, which belongs to the user's own errors.
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Where torchao is installed (the inductor extra), transformers imports it on every model load, and
# its import logs its CUDA-only libraries as missing and torch's pytree a deprecation warning: the same
# kind of noise, silenced the same way (their errors still show).
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)


def load_classifier(*args, **kwargs):
    """See `vitgender.classify.load_classifier` (imported lazily: torch is heavy)."""
    from vitgender.classify import load_classifier as _load

    return _load(*args, **kwargs)


__all__ = ["__version__", "load_classifier"]
