"""A named set of parameters as `dvc exp run` options: `python -m lstm_vs_gru.cli.set_params configs/tuned.yaml`
prints `-S key=value ...` for every value the file sets, after checking that each key exists in params.yaml and
that params.yaml with them applied is valid, so a typo fails in one line before any training.

The file mirrors params.yaml's sections, holding only the keys it changes. Use:

    dvc exp run -n tuned $(python -m lstm_vs_gru.cli.set_params configs/tuned.yaml)

DVC then records the experiment's params, metrics and outputs as for any `-S` run. Several files apply in
order, a later one winning: `configs/tuned.yaml configs/cleaned.yaml` is the tuned model on cleaned posts.

With `--folder tuned` it writes a pipeline of its own instead: tuned/params.yaml (params.yaml with the file's
values) and tuned/dvc.yaml (dvc.yaml's stages, reading the project's code from the root and writing their
outputs, dvc.lock and metrics under tuned/), run with `dvc repro tuned/dvc.yaml`. Its results are then
committed beside the main pipeline's, on the same branch."""
from __future__ import annotations

import copy
import io
import os
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedSeq

from lstm_vs_gru import params
from lstm_vs_gru.artifacts import write_text
from lstm_vs_gru.errors import OneLineParser, UserError, exits_cleanly

PIPELINE = Path("dvc.yaml")
# The project's code: a pipeline folder's stages depend on it, and import it, from the project root. Every
# other path of dvc.yaml (the corpus, data/, models/, metrics/, ...) is the folder's own.
SOURCE_FOLDERS = ("stages", "lstm_vs_gru")


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
        set_value(merged, dotted, value, source)
    return merged


def set_value(tree: dict[str, Any], dotted: str, value: Any, source: Path) -> None:
    """tree's value at the dotted key replaced in place; the key must already hold a value."""
    *parents, leaf = dotted.split(".")
    node: Any = tree
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node or isinstance(node[leaf], dict):
        raise UserError(f"{source}: {dotted}: not a parameter of params.yaml")
    node[leaf] = value


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


def as_list(files: Path | Sequence[Path]) -> list[Path]:
    return [files] if isinstance(files, Path) else list(files)


def read_sets(files: Path | Sequence[Path]) -> dict[str, Any]:
    """The dotted keys and values that parameter-set files set, applied in order: a later file wins."""
    merged: dict[str, Any] = {}
    for file in as_list(files):
        merged.update(read_overrides(file))
    return merged


def params_with(files: Path | Sequence[Path], params_path: Path = params.PARAMS) -> params.Params:
    """params.yaml with parameter-set files applied in order, validated; errors name the set files."""
    merged = params.read_yaml(params_path)
    for file in as_list(files):
        merged = apply(merged, read_overrides(file), file)
    return params.parse(merged, Path(" + ".join(str(file) for file in as_list(files))))


def round_trip_yaml() -> YAML:
    """ruamel's round-trip YAML, indented as the project's files are: edits keep their comments and order."""
    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 120
    # null as params.yaml spells it, not an empty value
    yaml.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return yaml


def dump(yaml: YAML, tree: Any) -> str:
    stream = io.StringIO()
    yaml.dump(tree, stream)
    return stream.getvalue()


def without_leading_comments(text: str) -> str:
    """The file from its first line that is neither a comment nor blank: its header describes the file."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#"))
    return "".join(lines[start:])


def from_folder(path: str, folder: PurePosixPath) -> str:
    """A project-relative path as seen from `folder` (both relative to the project root)."""
    return PurePosixPath(os.path.relpath(path, folder)).as_posix() if not os.path.isabs(path) else path


def is_source(path: str) -> bool:
    return PurePosixPath(path).parts[0] in SOURCE_FOLDERS


def folder_params(params_text: str, overrides: dict[str, Any], folder: PurePosixPath, header: str) -> str:
    """params.yaml with the overrides applied and data.source re-rooted for `folder`, comments kept."""
    yaml = round_trip_yaml()
    tree = yaml.load(params_text)
    for dotted, value in overrides.items():
        set_value(tree, dotted, flow(value), params.PARAMS)
    tree["data"]["source"] = from_folder(tree["data"]["source"], folder)
    return header + dump(yaml, tree)


def flow(value: Any) -> Any:
    """Lists as params.yaml writes them, on one line."""
    if not isinstance(value, list):
        return value
    seq = CommentedSeq(value)
    seq.fa.set_flow_style()
    return seq


def folder_pipeline(pipeline_text: str, folder: PurePosixPath, header: str) -> str:
    """dvc.yaml for a pipeline in `folder`: each stage's code dependencies read from the project root, and its
    command importing stages/ from there; outputs, metrics and plots stay relative, so they land in `folder`."""
    yaml = round_trip_yaml()
    tree = yaml.load(without_leading_comments(pipeline_text))
    root = from_folder(".", folder)
    for stage in tree["stages"].values():
        stage["cmd"] = f"PYTHONPATH={root} {stage['cmd']}"
        deps = stage.get("deps", [])
        for index, dep in enumerate(deps):  # in place, so each entry keeps its comment
            if is_source(dep):
                deps[index] = from_folder(dep, folder)
    return header + dump(yaml, tree)


def in_project(path: Path, root: Path) -> PurePosixPath:
    """`path` relative to the project root `root` (starting with .. when outside it)."""
    return PurePosixPath(os.path.relpath(path.resolve(), root.resolve()))


def pipeline_folder(files: Path | Sequence[Path], folder: Path, root: Path = Path(".")) -> dict[Path, str]:
    """The files of a pipeline of its own in `folder` (relative to the project root `root`) with the parameter
    sets `files` applied in order: its params.yaml and dvc.yaml, by path, as text."""
    relative = in_project(folder, root)
    if relative == PurePosixPath(".") or relative.parts[0] == "..":
        raise UserError(f"--folder {folder}: must be a folder inside the project, not its root")
    params_with(files, root / params.PARAMS)
    shown = " ".join(str(in_project(file, root)) for file in as_list(files))
    command = f"python -m lstm_vs_gru.cli.set_params {shown} --folder {relative}"
    written = (f"# Written by `{command}`:\n# {{}}.\n"
               "# Edit the project's files, not this one, then run the command again.\n")
    return {
        folder / params.PARAMS: folder_params(
            (root / params.PARAMS).read_text(encoding="utf-8"), read_sets(files), relative,
            written.format(f"the project's {params.PARAMS} with {shown} applied")),
        folder / PIPELINE: folder_pipeline(
            (root / PIPELINE).read_text(encoding="utf-8"), relative,
            written.format(f"the project's {PIPELINE}, its stages run in {relative}/ on the project root's code")),
    }


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m lstm_vs_gru.cli.set_params", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, metavar="file",
                        help="parameter-set files, e.g. configs/tuned.yaml, applied in order (a later file wins)")
    parser.add_argument("--params", type=Path, default=params.PARAMS,
                        help="the params.yaml to check against (beside it: the dvc.yaml that --folder derives from)")
    parser.add_argument("--folder", type=Path,
                        help="write FOLDER/params.yaml and FOLDER/dvc.yaml, a pipeline of its own, instead")
    args = parser.parse_args(argv)
    params_with(args.files, args.params)  # ParamError: the key, its value and what is allowed
    if args.folder is None:
        print(" ".join(dvc_options(read_sets(args.files))))
        return
    for path, text in pipeline_folder(args.files, args.folder, root=args.params.parent).items():
        write_text(path, text)
    print(f"wrote {args.folder / params.PARAMS} and {args.folder / PIPELINE}; run: dvc repro {args.folder / PIPELINE}")


if __name__ == "__main__":
    main()
