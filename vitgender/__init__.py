"""vitgender: ViT image classifiers (HF format) from checkpoint to phone, browser and server.

    >>> import vitgender
    >>> clf = vitgender.load_classifier()          # the embedded female/male model
    >>> clf.classify(["face.jpg"])                 # [[{"label": "female", "score": 0.97}, ...]]
"""

__version__ = "0.1.0"


def load_classifier(*args, **kwargs):
    """See `vitgender.classify.load_classifier` (imported lazily: torch is heavy)."""
    from vitgender.classify import load_classifier as _load

    return _load(*args, **kwargs)


__all__ = ["__version__", "load_classifier"]
