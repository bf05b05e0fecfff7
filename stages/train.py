"""Stage `train_lstm` / `train_gru`: train one classifier and evaluate it on the test split,
`python -m stages.train lstm|gru`.

Per-epoch logs go to dvclive/{cell}/ while training runs; models/{cell}.keras, metrics/{cell}.json and
plots/{cell}/{history,predictions}.csv are written only after training and evaluation both succeed. TensorFlow is
imported only once the cell argument, params.yaml and the padded arrays have been checked, so a mistake
fails in a second."""
from __future__ import annotations

from typing import Sequence

from lstm_vs_gru import training
from lstm_vs_gru.errors import OneLineParser, UserError, exits_cleanly
from lstm_vs_gru.params import CELL_CHOICES, load


def parse_cell(argv: Sequence[str] | None = None) -> str:
    """The cell named on the command line, checked against params.CELL_CHOICES."""
    parser = OneLineParser(prog="python -m stages.train", description=__doc__.splitlines()[0])
    parser.add_argument("cell", help="the recurrent cell to train: " + " or ".join(CELL_CHOICES))
    cell = parser.parse_args(argv).cell
    if cell not in CELL_CHOICES:
        raise UserError(f"unknown cell {cell!r}: must be one of {', '.join(CELL_CHOICES)}")
    return cell


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    cell = parse_cell(argv)
    params = load()
    if training.fused is not None:
        training.fused.check_environment()  # a bad $LSTM_VS_GRU_NATIVE fails here, before any work
    train, test = training.load_inputs(params)
    if training.fused is not None:
        training.fused.enable_compile_cache()  # before TensorFlow compiles anything
    result = training.train_and_evaluate(cell, params, train, test)
    training.write_outputs(cell, result)
    m = result.metrics
    print(f"{cell}: {m['params']:,} params, {m['seconds_per_epoch']} s/epoch, val_accuracy {m['val_accuracy']}, "
          f"test_accuracy {m['test_accuracy']}, test_macro_f1 {m['test_macro_f1']}")


if __name__ == "__main__":
    main()
