"""The types the public API's signatures use (for annotations only; nothing here is called)."""
from __future__ import annotations

import os
from typing import Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._core import PackedWeight, Tensor

# An array argument: a numpy array or anything numpy converts (lists, a CPU torch tensor), or a
# coreformer.Tensor on any device.
ArrayIn = Union[ArrayLike, Tensor]
# A Linear weight: an array, a Tensor, or a PackedWeight (CPU only).
WeightIn = Union[ArrayLike, Tensor, PackedWeight]
FloatArray = NDArray[np.float32]
IntArray = NDArray[np.int64]
# What an op returns: a new float32 array for array inputs, a Tensor on their device for Tensor inputs.
Result = Union[FloatArray, Tensor]
# A folder or file: a str or any os.PathLike (pathlib.Path).
PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["ArrayIn", "WeightIn", "FloatArray", "IntArray", "Result", "PathLike", "ArrayLike",
           "Tensor", "PackedWeight"]
