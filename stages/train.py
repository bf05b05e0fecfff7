"""Stage `train_lstm@SEED` / `train_gru@SEED` (one per seed of `train.seeds`): train one classifier and evaluate
it on the test split, `python -m stages.train lstm|gru [--seed N]` (default: the first of train.seeds).
`simple_rnn` trains the plain RNN the same way (bench/levers.py measures it; the pipeline compares LSTM and GRU).

Per-epoch logs go to dvclive/{cell}/seed{N}/ while training runs; models/{cell}/seed{N}.keras,
metrics/{cell}/seed{N}.json and plots/{cell}/seed{N}/{history,predictions}.csv are written only after
training and evaluation both succeed. TensorFlow is imported only once the arguments, params.yaml and the
padded arrays have been checked, so a mistake fails in a second."""
from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Sequence

from lstm_vs_gru import training
from lstm_vs_gru.errors import OneLineParser, UserError, exits_cleanly
from lstm_vs_gru.params import Params, TRAINABLE_CELLS, load


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The cell (checked against params.TRAINABLE_CELLS) and the seed named on the command line."""
    parser = OneLineParser(prog="python -m stages.train", description=__doc__.splitlines()[0])
    parser.add_argument("cell", help="the recurrent cell to train: " + ", ".join(TRAINABLE_CELLS))
    parser.add_argument("--seed", type=int, default=None, help="one of train.seeds (default: the first)")
    args = parser.parse_args(argv)
    if args.cell not in TRAINABLE_CELLS:
        raise UserError(f"unknown cell {args.cell!r}: must be one of {', '.join(TRAINABLE_CELLS)}")
    return args


def for_seed(params: Params, seed: int | None) -> Params:
    """params training with `seed`, which must be one of train.seeds (None: the first)."""
    if seed is None:
        return params
    if seed not in params.train.seeds:
        raise UserError(f"--seed {seed}: not one of train.seeds {list(params.train.seeds)} in params.yaml")
    return replace(params, train=params.train.with_seed(seed))


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    params = for_seed(load(), args.seed)
    if training.fused is not None:
        training.fused.check_environment()  # a bad $LSTM_VS_GRU_NATIVE fails here, before any work
    train, test = training.load_inputs(params)
    embedding = training.initial_embedding(params, train)
    if training.fused is not None:
        training.fused.enable_compile_cache()  # before TensorFlow compiles anything
    result = training.train_and_evaluate(args.cell, params, train, test, embedding)
    training.write_outputs(args.cell, params.train.seed, result)
    m = result.metrics
    print(f"{args.cell} seed {params.train.seed}: {m['params']:,} params, {m['seconds_per_epoch']} s/epoch, "
          f"val_accuracy {m['val_accuracy']}, test_accuracy {m['test_accuracy']}, test_macro_f1 {m['test_macro_f1']}")


if __name__ == "__main__":
    main()
