"""`python -m vmirom ...` is the `vmirom` command (for environments without the console script)."""

from vmirom.cli import main

main(prog_name="vmirom")
