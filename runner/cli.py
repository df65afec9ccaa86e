"""The `vmrun` command: validate, schema, show, run (and `vmrun FILE` for run).

Only this module turns errors into exit statuses; nothing a user can write gives a traceback.
Heavy modules are imported inside the commands that need them, so that `vmrun validate`
pays only for what it uses.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from runner.exit_status import ExitStatus

if TYPE_CHECKING:
    import argparse

    from runner.config.load import VmFile
    from runner.config.model import VmResources


def seconds(text: str) -> float:
    """A duration option: a positive number of seconds; anything else is a usage error."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:  # nan too
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


COMMANDS = ("validate", "schema", "show", "run", "emulated-host")


def _parser() -> argparse.ArgumentParser:
    import argparse  # here: the vmrun inside the emulated host parses no command line

    parser = argparse.ArgumentParser(
        prog="vmrun",
        description="Run Linux microVMs described by TOML or JSON files.",
        epilog="`vmrun FILE [-- CMD ARGS...]` is short for `vmrun run FILE [-- CMD ARGS...]`.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check VM files; exit 1 if any has a problem")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument(
        "--format", choices=("text", "json"), default="text",
        help="json: one object per problem, for CI annotations",
    )  # fmt: skip

    sub.add_parser("schema", help="print the JSON Schema of VM files")

    show = sub.add_parser("show", help="print a VM file with every default filled in")
    show.add_argument("file", metavar="FILE")
    show.add_argument("--format", choices=("toml", "json"), default="toml")

    run = sub.add_parser("run", help="boot the VM and run its workload (or CMD after --)")
    run.add_argument("file", metavar="FILE")
    run.add_argument(
        "--host", choices=("auto", "kvm", "emulated"), default="auto",
        help="where to run: /dev/kvm, an emulated KVM host, or auto (default): /dev/kvm "
        "where it can boot Linux, else the emulated host",
    )  # fmt: skip
    run.add_argument("--timeout", type=seconds, default=3600.0, metavar="SECONDS",
                     help="with the emulated host: stop everything after this long")  # fmt: skip
    run.add_argument(
        "--timings",
        action="store_true",
        help="print on stderr, at the end, when each phase of the run ended",
    )
    host = sub.add_parser(
        "emulated-host",
        help="run one command inside an emulated KVM host (QEMU TCG with SVM)",
        description="Run CMD inside a Linux host booted under QEMU's emulator, whose /dev/kvm "
        "is real. The command sees this machine's files at the same paths, read-only, except "
        "the current directory, each --writable DIR and $TMPDIR (a fresh scratch directory), "
        "which are read-write and whose changes stay on this machine. It runs in the current "
        "directory with this environment; its output streams back as it comes.",
        epilog="Exit status: the command's; 124 when --timeout ended it; 125 when the emulated "
        "host itself failed (the message says why).",
    )
    host.add_argument(
        "--timeout",
        type=seconds,
        default=3600.0,
        metavar="SECONDS",
        help="stop everything after this long (default 3600)",
    )
    host.add_argument("--cpus", type=int, default=2, help="vCPUs of the emulated host (default 2)")
    host.add_argument(
        "--memory",
        type=int,
        default=4096,
        metavar="MIB",
        help="memory of the emulated host in MiB (default 4096)",
    )
    host.add_argument("--writable", action="append", default=[], metavar="DIR",
                      help="another directory the command may write to (repeatable)")  # fmt: skip
    host.add_argument(
        "--hung-after",
        type=seconds,
        default=240.0,
        metavar="SECONDS",
        help="take the host for hung (status 125) when its init has shown no sign of life for "
        "this long (default 240)",
    )
    return parser


# What each command exits with when vmrun itself fails (a bad file, a package that cannot be
# had, KVM, I/O, the emulated host): `validate`, `schema` and `show` 1, `run` and
# `emulated-host` 125.
FAILURE_STATUS = {
    "validate": ExitStatus.INVALID,
    "schema": ExitStatus.INVALID,
    "show": ExitStatus.INVALID,
    "run": ExitStatus.VMM_FAILURE,
    "emulated-host": ExitStatus.VMM_FAILURE,
}
DEBUG_ENV = "VMRUN_DEBUG"  # 1: a vmrun bug shows its traceback on stderr


def split_workload(argv: Sequence[str] | None) -> tuple[list[str], list[str] | None]:
    """vmrun's own arguments, and the workload after `--` (None without one)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        return args, None
    cut = args.index("--")
    return args[:cut], args[cut + 1 :]


def main(argv: Sequence[str] | None = None) -> int:
    args_in, workload = split_workload(argv)
    parser = _parser()
    if args_in and args_in[0] not in COMMANDS and not args_in[0].startswith("-"):
        if not _names_a_vm_file(args_in[0]):
            parser.error(_unknown_command(args_in[0]))
        args_in.insert(0, "run")
    args = parser.parse_args(args_in)
    if workload is not None and args.command not in ("run", "emulated-host"):
        parser.error("`-- CMD ARGS...` is only for `vmrun run` and `vmrun emulated-host`")
    if args.command == "emulated-host" and not workload:
        parser.error("emulated-host needs a command: vmrun emulated-host -- CMD ARGS...")
    if workload == []:
        parser.error("`--` must be followed by a command")
    return outcome(args.command, lambda: _dispatch(args, workload))


def _names_a_vm_file(word: str) -> bool:
    """Whether `vmrun WORD` means `vmrun run WORD`: a VM file's name, or something that
    exists (whose loading then says what is wrong with it)."""
    import os

    return word.lower().endswith((".toml", ".json")) or os.path.exists(word)


def _unknown_command(word: str) -> str:
    import difflib

    from runner.printable import printable

    close = difflib.get_close_matches(word, COMMANDS, n=1, cutoff=0.6)
    hint = f"did you mean `{close[0]}`? " if close else ""
    return (
        f"`{printable(word)}` is neither a command nor a VM file (.toml, .json); {hint}"
        f"commands: {', '.join(COMMANDS)}"
    )


def outcome(command: str, work: Callable[[], int]) -> int:
    """The exit status of `command` doing `work`: the one place where errors become
    statuses (also for the vmrun inside the emulated host, runner/emulated/inside.py)."""
    from runner import termination
    from runner.config.problems import ConfigError
    from runner.errors import VmrunError, describe

    failure = FAILURE_STATUS[command]
    # SIGTERM stops `run` and `emulated-host` as Ctrl-C does: what they started is removed.
    starts_things = command in ("run", "emulated-host")
    try:
        with termination.sigterm_unwinds() if starts_things else contextlib.nullcontext():
            return work()
    except KeyboardInterrupt:
        return 128 + 2
    except termination.Terminated:
        return termination.EXIT_STATUS
    except BrokenPipeError:
        return ExitStatus.OK
    except ConfigError as error:
        print("\n".join(error.lines()), file=sys.stderr)
    except (VmrunError, OSError) as exc:
        _say(describe(exc))
    except Exception as exc:
        _say(_bug(exc))
    return failure


def _dispatch(args: argparse.Namespace, workload: list[str] | None) -> int:
    if args.command == "validate":
        return validate(args.files, args.format)
    if args.command == "schema":
        return schema()
    if args.command == "show":
        return show(args.file, args.format)
    if args.command == "emulated-host":
        settings = (args.cpus, args.memory, args.timeout, tuple(args.writable), args.hung_after)
        return emulated_host(workload or [], *settings)
    return run(args.file, args.host, workload, args.timeout, args.timings)


def _say(message: str) -> None:
    from runner.printable import printable  # messages quote paths and values from files

    print(f"vmrun: {printable(message)}", file=sys.stderr, flush=True)


def _bug(exc: Exception) -> str:
    """One line for an exception that no layer expected (a vmrun bug): what it was, and
    where its traceback is (a file, or stderr with VMRUN_DEBUG=1)."""
    import os
    import traceback

    what = f"internal error (a vmrun bug): {type(exc).__name__}: {exc}"
    text = "".join(traceback.format_exception(exc))
    if os.environ.get(DEBUG_ENV) == "1":
        sys.stderr.write(text)
        return what
    try:
        path = _bug_report_file(text)
    except OSError:
        return f"{what}; run with {DEBUG_ENV}=1 to see its traceback"
    return f"{what}; its traceback is in {path} ({DEBUG_ENV}=1 shows it here)"


def _bug_report_file(text: str) -> str:
    import os
    import tempfile

    from runner.cache import cache_dir

    try:
        fd, path = tempfile.mkstemp(
            prefix="vmrun-bug-", suffix=".txt", dir=cache_dir("bug-reports")
        )
    except OSError:  # a read-only cache (inside the emulated host): the temporary directory
        fd, path = tempfile.mkstemp(prefix="vmrun-bug-", suffix=".txt")
    with os.fdopen(fd, "w") as report:
        report.write(text)
    return path


def validate(files: list[str], fmt: str) -> int:
    """Check each file, whatever happens with the others: a file's problems are listed (in
    JSON, one record each), and a file that vmrun fails on (an I/O error, a vmrun bug) is
    said too, so that every file given has its outcome."""
    from runner.config.load import load
    from runner.config.problems import ConfigError, Location, Problem
    from runner.errors import VmrunError, describe

    records: list[dict[str, object]] = []
    invalid = failed = 0
    for file in files:
        try:
            load(file)
        except ConfigError as error:
            invalid += 1
            if fmt == "json":
                records += error.records()
            else:
                print("\n".join(error.lines()), flush=True)
        except Exception as exc:  # not the file's problem, but this file's outcome
            failed += 1
            message = describe(exc) if isinstance(exc, VmrunError | OSError) else _bug(exc)
            if fmt == "json":
                records += ConfigError(file, [Problem((), message)], [Location(1, 1)]).records()
            else:
                _say(f"{file}: {message}" if len(files) > 1 else message)
    if fmt == "json":
        import json

        print(json.dumps(records, indent=2))
    elif invalid:
        print(f"{invalid} of {len(files)} file(s) invalid", file=sys.stderr)
    return ExitStatus.INVALID if invalid or failed else ExitStatus.OK


def schema() -> int:
    from runner.config.schema import schema_text

    sys.stdout.write(schema_text())
    return ExitStatus.OK


def show(file: str, fmt: str) -> int:
    from runner.boot.cmdline import compose
    from runner.config.convert import unstructure
    from runner.config.load import load

    vm = load(file)
    document = unstructure(vm.resources)
    if fmt == "json":
        import json

        print(json.dumps(document, indent=2))
        return ExitStatus.OK
    import tomli_w

    from runner.printable import printable, printable_toml

    # Comments hold no control character (TOML refuses them there, and a terminal acts on
    # them): the output is always a VM file that loads again.
    print(f"# {printable(file)} with every default filled in (vmrun show)")
    print(f"# kernel command line: {printable(compose(vm.resources))}")
    sys.stdout.write(printable_toml(tomli_w.dumps(document)))
    return ExitStatus.OK


def run(
    file: str, host: str, workload: list[str] | None, timeout_s: float, show_timings: bool
) -> int:
    return _timed(show_timings, lambda: _run(file, host, workload, timeout_s))


def run_prepared(path: str, workload: list[str] | None, show_timings: bool) -> int:
    """`vmrun run` inside the emulated host: the VM that the vmrun outside loaded and
    checked (runner/emulated/prepared_vm.py), on this host's KVM."""
    return _timed(show_timings, lambda: _run_prepared(path, workload))


def _timed(show_timings: bool, work: Callable[[], int]) -> int:
    from runner import timings

    if show_timings:
        timings.TIMELINE.enable()
        timings.mark(f"vmrun started{_where()}")
    try:
        return work()
    finally:
        timings.TIMELINE.report(sys.stderr)


def _run(file: str, host: str, workload: list[str] | None, timeout_s: float) -> int:
    from runner import timings
    from runner.config.load import load
    from runner.host_kvm import choose_host, kvm_status
    from runner.unsupported import refusals

    vm = load(file)
    if workload is None and vm.resources.workload is None:
        _say(f"{file} has no [workload]; give one after `--`")
        return ExitStatus.VMM_FAILURE
    refused = refusals(vm.resources)
    if refused:
        raise vm.error(refused)
    timings.mark(f"VM file loaded{_where()}")
    status = kvm_status()
    where = choose_host(host, status)
    if where == "emulated":
        if host == "auto":
            _say(f"{status.reason}; running in the emulated KVM host")
        return _run_emulated(vm, workload, timeout_s)
    return _run_on_kvm(vm.resources, workload)


def _run_prepared(path: str, workload: list[str] | None) -> int:
    from runner import timings
    from runner.emulated import prepared_vm

    resources = prepared_vm.read(path)
    timings.mark(f"VM received{_where()}")
    return _run_on_kvm(resources, workload)


def _where() -> str:
    """How a phase of the vmrun inside the emulated host is named in --timings."""
    from runner.host_kvm import inside_emulated_host

    return " (inside the emulated host)" if inside_emulated_host() else ""


def _run_on_kvm(resources: VmResources, workload: list[str] | None) -> int:
    from runner import progress, timings
    from runner.builder import build, workload_argv
    from runner.vmm import run_machine

    machine = build(resources, workload_argv(resources, workload))
    timings.mark("machine built")
    progress.phase("booting the VM")
    ending = run_machine(machine)
    timings.mark("torn down")
    if ending.reason:
        _say(ending.reason)
    return ending.status


def _run_emulated(vm: VmFile, workload: list[str] | None, timeout_s: float) -> int:
    from runner import timings
    from runner.emulated.delegate import run_in_emulated_host
    from runner.guest.provision import provision_guest

    # The emulated host has no network: what the VM needs is downloaded and built here.
    provision_guest(vm.resources)
    timings.mark("guest provisioned")
    outcome = run_in_emulated_host(vm, workload, timeout_s)
    timings.mark("emulated host ended")
    if outcome.message:
        _say(f"the emulated host: {outcome.message}")
    return outcome.status


def emulated_host(
    argv: list[str],
    cpus: int,
    memory_mib: int,
    timeout_s: float,
    writable: tuple[str, ...],
    hung_after_s: float,
) -> int:
    from runner.emulated.host import Settings, run_in_host
    from runner.emulated.image import provision

    image = provision()
    settings = Settings(
        cpus=cpus,
        memory_mib=memory_mib,
        timeout_s=timeout_s,
        writable=writable,
        hung_after_s=hung_after_s,
        stdin="pass",  # the command's own: `... | vmrun emulated-host -- cat` reads it to its end
        snapshot=True,
    )
    outcome = run_in_host(image, argv, settings, sys.stdout.buffer, sys.stderr.buffer)
    if outcome.message:
        _say(outcome.message)
    return outcome.status
