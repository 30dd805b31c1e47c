"""train.py's flags from its Config dataclass: one flag per field, with its help and, in --help, the default each
table of defaults gives it. Not the paper's method.
"""
import argparse
import dataclasses
import pickle
import typing


class UserError(ValueError):
    """A mistake in the command line or the input files: reported in one line, without a traceback."""


# What reading the user's input raises (our checks, files or weights that fail to load): the user's to fix, in one line
INPUT_ERRORS = (ValueError, OSError, RuntimeError, pickle.UnpicklingError)


def flag(default, help: str):
    """A Config field with its help text."""
    return dataclasses.field(default=default, metadata=dict(help=help))


def positive_int(text: str) -> int:
    if int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return int(text)


def make_parser(config_class, description: str, tables: dict, choices: dict, optional_value: dict = None,
                positive: tuple = ()) -> argparse.ArgumentParser:
    """An ArgumentParser with a flag per field of config_class. Defaults are SUPPRESSed, so that the parsed namespace
    holds exactly the flags given (a resumed run compares those). tables: {prefix: {setting: {field: value}}}, shown
    in each flag's help; choices: {field: allowed values}; optional_value: {field: the value of the bare flag};
    positive: fields that take a positive integer."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=argparse.SUPPRESS)
    for f in dataclasses.fields(config_class):
        shown = [f"{where}{setting} {table[setting][f.name]}" for where, table in tables.items()
                 for setting in table if f.name in table[setting]]
        default = "; ".join(shown) or (f.default if f.default not in (None, "", False) else "")
        text = f.metadata["help"] + (f" (default: {default})" if default != "" else "")
        name = "--" + f.name.replace("_", "-")
        if f.type is bool:
            parser.add_argument(name, action="store_true", help=text)
        elif f.name in (optional_value or {}):
            const = optional_value[f.name]
            parser.add_argument(name, nargs="?", const=const, metavar=const.upper().replace(".", "_"), help=text)
        else:
            kind = (typing.get_args(f.type) or [f.type])[0]
            kind = positive_int if f.name in positive else kind
            parser.add_argument(name, type=kind, choices=choices.get(f.name), help=text)
    return parser
