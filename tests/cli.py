"""Running the ``splitc`` command line in-process, as the tests do."""

from __future__ import annotations

import pytest

from splitc.driver.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``splitc ARGS`` in this process; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err
