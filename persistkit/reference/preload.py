"""Warm up everything the reference bot needs, for a fork server (``persistkit.testing.forkserver``).

torch is limited to one thread (the bot's LSTM is tiny, and thread pools do
not survive ``fork()`` well), and one LSTM pass runs here so that lazily
imported torch submodules are loaded before the first fork.
"""

import sklearn.linear_model
import sklearn.preprocessing  # noqa: F401
import skops.io  # noqa: F401
import torch

from persistkit.format.codecs import sklearn as _sklearn_codec
from persistkit.reference.components import DeepSignalModel, SignalModel

torch.set_num_threads(1)
_warm = DeepSignalModel(0)
_warm.learn([100.0 + i for i in range(20)], 1.0)
_sklearn_codec.default_trusted_types()
SignalModel(0)
