"""A named set of parameters as `dvc exp run` options: `python -m lstm_vs_gru.cli.set_params configs/tuned.yaml`
prints `-S key=value ...` for every value the file sets, after checking that each key exists in params.yaml and
that params.yaml with them applied is valid, so a typo fails in one line before any training.

The file mirrors params.yaml's sections, holding only the keys it changes. Use:

    dvc exp run -n tuned $(python -m lstm_vs_gru.cli.set_params configs/tuned.yaml)

DVC then records the experiment's params, metrics and outputs as for any `-S` run."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator, Sequence

from lstm_vs_gru import params
from lstm_vs_gru.errors import OneLineParser, UserError, exits_cleanly


def leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for every non-mapping value under `tree`."""
    if isinstance(tree, dict) and tree:
        for key, value in tree.items():
            yield from leaves(value, f"{prefix}{key}.")
    else:
        yield prefix.removesuffix("."), tree


def read_overrides(path: Path) -> dict[str, Any]:
    """The dotted keys and values a parameter-set file sets."""
    tree = params.read_yaml(path)
    if not isinstance(tree, dict) or not tree:
        raise UserError(f"{path}: must be a mapping of params.yaml sections to the values it changes")
    return dict(leaves(tree))


def apply(base: dict[str, Any], overrides: dict[str, Any], source: Path) -> dict[str, Any]:
    """base with the overrides applied; every overridden key must already be a value in base."""
    merged = copy.deepcopy(base)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = merged
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node or isinstance(node[leaf], dict):
            raise UserError(f"{source}: {dotted}: not a parameter of params.yaml")
        node[leaf] = value
    return merged


UNSAFE_IN_SHELL = "'\"*?$`;&|<>()"


def option_value(value: Any) -> str:
    """A value as DVC's `-S` grammar reads it, without spaces: `$(...)` splits the printed options on
    whitespace and ignores quotes, so `[0, 1, 2]` would reach DVC as three broken words."""
    if isinstance(value, list):
        return "[" + ",".join(option_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{option_value(item)}" for key, item in value.items()) + "}"
    return params.flow_yaml(value)


def dvc_options(overrides: dict[str, Any]) -> list[str]:
    """`-S key=value` for each override; refuses a value that the shell's word splitting would break."""
    options = []
    for dotted, value in overrides.items():
        shown = option_value(value)
        if any(char.isspace() or char in UNSAFE_IN_SHELL for char in shown):
            raise UserError(f"{dotted} = {shown}: a value passed through $(...) "
                            f"may not hold spaces or {UNSAFE_IN_SHELL}")
        options += ["-S", f"{dotted}={shown}"]
    return options


def params_with(file: Path, params_path: Path = params.PARAMS) -> params.Params:
    """params.yaml with a parameter-set file applied, validated; errors name the set file."""
    return params.parse(apply(params.read_yaml(params_path), read_overrides(file), file), file)


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m lstm_vs_gru.cli.set_params", description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="a parameter-set file, e.g. configs/tuned.yaml")
    parser.add_argument("--params", type=Path, default=params.PARAMS, help="the params.yaml to check against")
    args = parser.parse_args(argv)
    params_with(args.file, args.params)  # ParamError: the key, its value and what is allowed
    print(" ".join(dvc_options(read_overrides(args.file))))


if __name__ == "__main__":
    main()
