"""The fused trainer: what Keras's model.fit computes for the lab's model (the same batches, dropout, loss and
Adam), about 3x faster on CPUs. `trainer.py` holds it; `native_ops.cc` three C++ TensorFlow ops it uses, built
on first use by `native_ops.py`; `compile_cache.py` XLA's persistent compilation cache.

This module is the one boundary the rest of the project uses. Without this folder the project still works:
`lstm_vs_gru.training` then trains with Keras's model.fit and says so in one line. Nothing here imports
TensorFlow until `fit` runs."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def check_environment() -> None:
    """Fail in one line on a bad $LSTM_VS_GRU_NATIVE, before any expensive work."""
    from lstm_vs_gru.fused import native_ops

    native_ops.mode()


def enable_compile_cache() -> None:
    """XLA's persistent compilation cache for this process (before TensorFlow compiles anything)."""
    from lstm_vs_gru.fused import compile_cache

    compile_cache.enable()


def supports(model: Any) -> bool:
    """Whether the fused trainer can train `model` (Embedding -> LSTM/GRU -> stateless layers)."""
    from lstm_vs_gru.fused import trainer

    return trainer.supports(model)


def fit(model: Any, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int, learning_rate: float,
        validation_split: float, seed: int, callbacks: Sequence[Any] = (), lazy_adam: bool = False
        ) -> dict[str, list[float]]:
    """Train as compile(Adam, sparse cross-entropy, accuracy) + fit(shuffle=True) would; model.fit's history."""
    from lstm_vs_gru.fused import trainer

    return trainer.fast_fit(model, x, y, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                            validation_split=validation_split, seed=seed, callbacks=callbacks, lazy_adam=lazy_adam)


def trained_with() -> str:
    """The code that ran `fit` in this process: "native" (its C++ ops loaded) or "xla"."""
    from lstm_vs_gru.fused import native_ops

    return "native" if native_ops.load() is not None else "xla"  # load() is kept for the process
