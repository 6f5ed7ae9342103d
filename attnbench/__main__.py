"""The ``attnbench`` script and ``python -m attnbench``: the command line of ``attnbench.cli``.

Signals are handled before anything heavy is imported: a Ctrl-C or SIGTERM while torch loads is one
line and exit 130 / 143, never a traceback; once the command has ended, a late signal only sets the
exit status.
"""

import sys


def main() -> None:
    from .guard import interrupts

    interrupts.ignore_at_last_exit()
    interrupts.install()
    try:
        try:
            from .cli import main as cli_main
        except KeyboardInterrupt as exc:
            signum = interrupts.signum_of(exc)
            sys.stderr.write(f"interrupted by {interrupts.NAMES.get(signum, signum)} while starting; nothing was run\n")
            sys.exit(128 + signum)
        try:
            cli_main()
        except KeyboardInterrupt as exc:  # a signal in the instant between the command's end and here
            sys.exit(128 + interrupts.signum_of(exc))
    finally:
        interrupts.exit_now()


if __name__ == "__main__":
    main()
