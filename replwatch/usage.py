"""Usage errors on the command line: one line on stderr that names the option, exit status 2,
never a traceback or a usage block. Every replwatch command's parser is a UsageParser (its
subcommands' parsers too: argparse gives them the parent's class); errors found after
parsing (an unknown --group, a --duration that is no duration) are UsageErrors, which the
command's entry point prints the same way."""

from __future__ import annotations

import argparse
from typing import Final, NoReturn

from replwatch.errors import ConfigError

EXIT_USAGE: Final = 2
DEFAULT_CONFIG: Final = "config.yaml"
# how every -c/--config shows its default in --help (the same words in every command)
CONFIG_DEFAULT_SHOWN: Final = f"(default: {DEFAULT_CONFIG})"
CONFIG_HELP: Final = f"config file (YAML) {CONFIG_DEFAULT_SHOWN}"


class UsageError(ConfigError):
    """A bad command-line value or name: `source` is the option (`--group`), the one
    problem says what is wrong with it. Printed as '<option>: <problem>', exit 2."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(option, [problem])


class UsageParser(argparse.ArgumentParser):
    """argparse's parser with one-line errors: 'replwatch status: unrecognized arguments:
    --nope (see replwatch status --help)', exit 2 (argparse prints the usage block too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")
