"""`pyproxy` command line: the same verbs and flags as `caddy` where they overlap.

Exit codes: 0 success; 1 config/usage error or failed check; 2 bad command line
(argparse); other codes are documented per command.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from config.errors import ConfigError
from proxy import __version__

# Long help per verb, printed by `pyproxy help <verb>` and `pyproxy <verb> --help`, in the shape
# of `caddy help <verb>`: what it does, an example, and (beyond Caddy) the exit codes.
VERB_HELP: dict[str, tuple[str, str, str]] = {
    "adapt": (
        "Adapts a configuration to pyproxy's native JSON config structure and writes the\n"
        "output to stdout, along with any warnings to stderr. Without --config, ./Caddyfile\n"
        "is adapted, as by `caddy adapt`.",
        "pyproxy adapt --config /etc/caddy/Caddyfile --pretty",
        "0 adapted; 1 the config does not parse or adapt (file:line in the message)",
    ),
    "validate": (
        "Loads and provisions the provided config, but does not start running it. This\n"
        "reveals any errors with the configuration through the loading and provisioning\n"
        "stages, like `caddy validate`.",
        "pyproxy validate --config /etc/caddy/Caddyfile",
        "0 valid; 1 invalid (every error found is listed)",
    ),
    "check": (
        "Same as `validate` (an alias kept for pyproxy's own scripts).",
        "pyproxy check /etc/caddy/Caddyfile",
        "0 valid; 1 invalid",
    ),
    "fmt": (
        "Formats the Caddyfile by adding proper indentation and spaces to improve\n"
        "human readability. It prints the result to stdout; --overwrite writes it back,\n"
        "--diff prints the changes instead. `-` reads stdin.",
        "pyproxy fmt --overwrite /etc/caddy/Caddyfile",
        "0 formatted, or written back with --overwrite; 1 the input file is not formatted\n"
        "  (without --overwrite; stdin is a pure filter and exits 0, as in current Caddy)\n"
        "  or cannot be read",
    ),
    "hash-password": (
        "Convenient way to hash a plaintext password for the basic_auth directive, as\n"
        "`caddy hash-password` does (bcrypt, cost 14). Without --plaintext the password\n"
        "is asked twice on a terminal, else read from the first line of stdin.",
        "pyproxy hash-password --plaintext hiccup",
        "0 printed; 1 unknown --algorithm, empty password or the two entries differ",
    ),
    "list-modules": (
        "Lists the Caddy modules pyproxy implements, by Caddy's module IDs (e.g.\n"
        "http.handlers.reverse_proxy), as `caddy list-modules` does.",
        "pyproxy list-modules --versions",
        "0 always",
    ),
    "version": (
        "Prints the version of pyproxy and of its compiled modules.",
        "pyproxy version",
        "0 always",
    ),
    "reload": (
        "Gives the running instance a new configuration. This has the same effect as\n"
        "POSTing a document to the /load admin endpoint, as `caddy reload` does. The admin\n"
        "address comes from --address, else from the config file, else the default.",
        "pyproxy reload --config /etc/caddy/Caddyfile",
        "0 the new config is running; 1 the config is invalid, the instance refused it,\n"
        "  or no instance answers at the admin address",
    ),
    "start": (
        "Starts pyproxy in the background with the flags of `run`, and returns once the\n"
        "instance confirms it serves (its admin endpoint answers), as `caddy start` does.\n"
        "Stop it with `pyproxy stop`. A config with `admin off` is refused: use `run`.",
        "pyproxy start --config /etc/caddy/Caddyfile --pidfile /run/pyproxy.pid",
        "0 started and serving; 1 the instance failed to start (its error is printed),\n"
        "  another instance holds the admin address, or no confirmation within 120 s",
    ),
    "reverse-proxy": (
        "A simple reverse proxy, like `caddy reverse-proxy`: shuttles HTTP(S) traffic from\n"
        "the --from address to the --to address(es) (repeat --to for several). A --from\n"
        "with a host is served over HTTPS unless its scheme or port says HTTP; --to is\n"
        "HTTP unless it says https://. Runs in the foreground with the admin endpoint off.",
        "pyproxy reverse-proxy --from :8080 --to 127.0.0.1:9000",
        "0 stopped normally; 1 a bad flag or address, or the proxy failed to start",
    ),
    "stop": (
        "Gracefully stops the running instance through its admin API (POST /stop), as\n"
        "`caddy stop` does.",
        "pyproxy stop --address localhost:2019",
        "0 stopped; 1 no instance answers or it refused",
    ),
    "environ": (
        "Prints the environment as pyproxy sees it: its own paths (data, config, autosave)\n"
        "first, then the process environment, as `caddy environ` does.",
        "pyproxy environ",
        "0 always",
    ),
    "trust": (
        "Prints the path of the local CA's root certificate; --install adds it, as\n"
        "`caddy trust` does, to every NSS database (Firefox profiles, ~/.pki/nssdb for\n"
        "Chromium) when certutil exists, and to the system trust store\n"
        "(/usr/local/share/ca-certificates + update-ca-certificates), named\n"
        "'Truststore Development CA <serial>' as Caddy names it.",
        'curl --cacert "$(pyproxy trust)" https://localhost/\n  pyproxy trust --install',
        "0 done; 1 failed (the message says why)",
    ),
    "untrust": (
        "Removes the local CA's root certificate from the NSS databases and the system\n"
        "trust store, as `caddy untrust` does; --cert FILE names the root directly.",
        "pyproxy untrust\n  pyproxy untrust --cert root.crt",
        "0 removed (or was not installed); 1 failed (the message says why)",
    ),
    "certs": (
        "Lists the managed certificates: subject names, issuer, expiry and when the next\n"
        "renewal is due.",
        "pyproxy certs",
        "0 listed; 1 failed (the message says why)",
    ),
    "run": (
        "Starts the server and blocks indefinitely, in the foreground, like `caddy run`.\n"
        "Without --config, ./Caddyfile is loaded if it exists. --resume prefers the config\n"
        "last pushed through the admin API (autosave.json).",
        "pyproxy run --config /etc/caddy/Caddyfile --watch",
        "0 stopped cleanly; 1 the config is invalid or a listener cannot be bound",
    ),
    "help": (
        "Shows help for pyproxy, or for one of its commands.",
        "pyproxy help reload",
        "0 shown; 1 unknown command",
    ),
}


def _print_warnings(warnings: Sequence[object]) -> None:
    for w in warnings:
        file, line, message = (
            getattr(w, "file", ""),
            getattr(w, "line", 0),
            getattr(w, "message", w),
        )
        where = f"{file}:{line}: " if file else ""
        # The adapter words its fmt hint as Caddy does; name the command actually running.
        text = str(message).replace("'caddy fmt ", f"'{_prog()} fmt ")
        print(f"WARN {where}{text}", file=sys.stderr)


def _prog() -> str:
    """The name this command line was invoked as: `pyproxy`, or `caddy` through the shim."""
    return os.environ.get("PYPROXY_PROG") or "pyproxy"


_NO_CADDYFILE = (
    "Error: input file required when there is no Caddyfile in current directory (use --config flag)"
)


def cmd_adapt(args: argparse.Namespace) -> int:
    from config.source import load_config

    if args.config is None and not Path("Caddyfile").exists():
        print(_NO_CADDYFILE, file=sys.stderr)  # caddy adapt's wording; exit 1 as Caddy
        return 1
    try:
        config, warnings = load_config(args.config, args.adapter or "caddyfile")
        if args.validate:
            from config.model import load_model

            load_model(config)
    except ConfigError as exc:
        print(f"Error: adapting config using caddyfile: {exc}", file=sys.stderr)
        return 1
    _print_warnings(warnings)
    if args.pretty:
        print(json.dumps(config, indent="\t"))
    else:
        print(json.dumps(config, separators=(",", ":")))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from config.source import load_config
    from proxy.supervisor import validate

    if args.config is None and not Path("Caddyfile").exists():
        # Caddy says "decoding config: unexpected end of JSON input" here; adapt's hint helps.
        print(_NO_CADDYFILE, file=sys.stderr)
        return 1
    try:
        config, warnings = load_config(args.config, args.adapter)
        _print_warnings(warnings)
        # What `run` checks before binding (model, certificate files, TLS policies), like
        # `caddy validate`, which provisions the config without starting it.
        validate(config)
    except ConfigError as exc:
        for error in _all_caddyfile_errors(args, exc):
            where = (
                f"{error.location}: " if error.location and error.location not in str(error) else ""
            )
            print(f"Error: {where}{error}", file=sys.stderr)
        return 1
    print("Valid configuration")
    return 0


def _all_caddyfile_errors(args: argparse.Namespace, first: ConfigError) -> list[ConfigError]:
    """For a Caddyfile, every site block's error (not just the first); else just `first`."""
    from config.source import DEFAULT_CONFIG_FILE, guess_adapter, read_config_text

    path = args.config or DEFAULT_CONFIG_FILE
    if (args.adapter or guess_adapter(path)) != "caddyfile":
        return [first]
    from config.adapt import caddyfile_errors

    try:
        errors = caddyfile_errors(read_config_text(path), path)
    except ConfigError:
        return [first]
    # The first error may come from a later stage (the model) that adapting alone does not see.
    return errors or [first]


def _fmt_decode(data: bytes) -> str:
    """Decode like Go's rune reader: each byte of an invalid UTF-8 sequence becomes one U+FFFD
    (Python's "replace" handler would fold a truncated sequence into a single U+FFFD)."""
    out: list[str] = []
    pos = 0
    while pos < len(data):
        try:
            out.append(data[pos:].decode("utf-8"))
            break
        except UnicodeDecodeError as exc:
            out.append(data[pos : pos + exc.start].decode("utf-8"))
            out.append("\ufffd")
            pos += exc.start + 1
    return "".join(out)


def _fmt_line_diff(old: list[str], new: list[str]) -> list[tuple[str, str]]:
    """Line diff as `caddy fmt --diff` shows it: ("  "|"- "|"+ ", line) pairs.

    Caddy uses an LCS diff that, at each step, prefers dropping an old line, then adding a new
    one, and matches a common line only when neither keeps the LCS length. The matching is
    reproduced here (not the code) so diffs of repeated lines, such as blank ones, look the same.
    """
    head = 0
    while head < min(len(old), len(new)) and old[head] == new[head]:
        head += 1
    # Caddy's tail trim never reaches the first line after the common head.
    tail = 0
    while (
        len(old) - 1 - tail > head
        and len(new) - 1 - tail > head
        and old[-1 - tail] == new[-1 - tail]
    ):
        tail += 1
    a, b = old[head : len(old) - tail], new[head : len(new) - tail]
    body: list[tuple[str, str]] = []
    if len(a) * len(b) > 4_000_000:
        # A full LCS table would be too big; difflib's matcher gives a comparable answer.
        matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                body += [("  ", line) for line in a[i1:i2]]
            else:
                body += [("- ", line) for line in a[i1:i2]] + [("+ ", line) for line in b[j1:j2]]
    else:
        # lcs[i][j] = length of the LCS of a[i:] and b[j:].
        lcs = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(len(a) - 1, -1, -1):
            for j in range(len(b) - 1, -1, -1):
                lcs[i][j] = (
                    lcs[i + 1][j + 1] + 1 if a[i] == b[j] else max(lcs[i + 1][j], lcs[i][j + 1])
                )
        i = j = 0
        while i < len(a) or j < len(b):
            if i < len(a) and lcs[i][j] == lcs[i + 1][j]:
                body.append(("- ", a[i]))
                i += 1
            elif j < len(b) and lcs[i][j] == lcs[i][j + 1]:
                body.append(("+ ", b[j]))
                j += 1
            else:
                body.append(("  ", a[i]))
                i, j = i + 1, j + 1
    return (
        [("  ", line) for line in old[:head]]
        + body
        + [("  ", line) for line in old[len(old) - tail :]]
    )


def cmd_fmt(args: argparse.Namespace) -> int:
    from config.caddyfile.formatter import format_caddyfile

    # Same argument rules as `caddy fmt`: one path, as an argument or --config, default
    # ./Caddyfile; "-" means stdin.
    if len(args.file) > 1 or (args.config and args.file):
        # Caddy's exact text: "%s %s" of the --config value (maybe empty) and the arguments.
        names = f"{args.config or ''} {' '.join(args.file)}"
        print(f"Error: fmt does not support multiple files {names}", file=sys.stderr)
        return 1
    path = args.file[0] if args.file else (args.config or "Caddyfile")
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        what = "stdin" if path == "-" else "input file"
        print(f"Error: reading {what}: {exc}", file=sys.stderr)
        return 1
    # Bytes in, bytes out: no newline translation, so CR LF input is seen as Caddy sees it.
    text = _fmt_decode(raw)
    formatted = format_caddyfile(text).encode("utf-8")
    if path == "-":
        # Like Caddy, stdin is a pure filter: no --overwrite, --diff or formatting check.
        sys.stdout.buffer.write(formatted)
        sys.stdout.flush()
        return 0
    if args.overwrite:
        try:
            if formatted != raw:
                Path(path).write_bytes(formatted)
        except OSError as exc:
            print(f"Error: overwriting formatted file: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.diff:
        old_lines = text.split("\n")
        new_lines = formatted.decode("utf-8").split("\n")
        for prefix, line in _fmt_line_diff(old_lines, new_lines):
            sys.stdout.buffer.write(f"{prefix}{line}\n".encode())
    else:
        sys.stdout.buffer.write(formatted)
    sys.stdout.flush()
    # Like current Caddy: unformatted input is an error, so CI can use `fmt` as a check. Caddy
    # ignores CR LF line endings for this check and names the first line that differs.
    normalized = raw.replace(b"\r\n", b"\n")
    wanted = format_caddyfile(_fmt_decode(normalized)).encode("utf-8")
    if wanted != normalized:
        same = 0
        while same < min(len(wanted), len(normalized)) and wanted[same] == normalized[same]:
            same += 1
        lineno = normalized[:same].count(b"\n") + 1
        print(
            f"Error: {path}:{lineno}: Caddyfile input is not formatted; Tip: use '--overwrite' to"
            " update your Caddyfile in-place instead of previewing it. Consult '--help' for more"
            " options",
            file=sys.stderr,
        )
        return 1
    return 0


# How long `start` waits for the background instance to confirm it serves. Caddy waits without
# a limit; a bound keeps a wedged start from hanging a script forever.
START_TIMEOUT_S = 120.0
START_POLL_S = 0.1


def _product() -> str:
    return "Caddy" if _prog() == "caddy" else "pyproxy"


def cmd_start(args: argparse.Namespace) -> int:
    """`caddy start`: run the instance in the background and return once it serves.

    Caddy's child confirms over a one-time loopback connection (`--pingback`). pyproxy's
    confirmation is its admin endpoint answering: the supervisor opens it only after every
    worker has applied the config (proxy.supervisor), so an answer means "started
    successfully". The child's exit before that is a failed start; its error is on the shared
    stderr already, as with Caddy. Deviation: a config with the admin endpoint disabled cannot
    be confirmed, so `start` refuses it (use `run`)."""
    import signal
    import subprocess

    from proxy.admin_client import AdminRequestError, admin_request, determine_admin_address

    config: dict[str, object] | None = None
    if args.envfile:
        from config.envfile import load_envfile

        try:
            load_envfile(args.envfile)  # the config may use its {$VARS}
        except (ConfigError, OSError) as exc:
            print(f"Error: loading config: {exc}", file=sys.stderr)
            return 1
    try:
        from config.source import load_config

        loaded, _ = load_config(args.config, args.adapter)
        config = dict(loaded)
    except (ConfigError, OSError):
        config = None  # the child reports it, with Caddy's wording, and fails the start
    admin = config.get("admin") if config else None
    if isinstance(admin, dict) and admin.get("disabled"):
        print(
            "Error: start confirms the instance through its admin endpoint, which the config"
            f" disables; use '{_prog()} run' instead",
            file=sys.stderr,
        )
        return 1
    address = determine_admin_address(None, config)
    try:
        admin_request(address, "GET", "/config/", {}, None, timeout=1.0)
    except AdminRequestError:
        pass  # nothing answers there yet: the new instance's admin endpoint can be recognised
    else:
        print(
            f"Error: an instance is already running with its admin endpoint at {address}",
            file=sys.stderr,
        )
        return 1
    command = [sys.executable, "-m", "proxy.cli", "run"]
    for flag in ("config", "adapter", "envfile", "pidfile"):
        value = getattr(args, flag)
        if value:
            command += [f"--{flag}", value]
    if args.watch:
        command.append("--watch")
    # Its own session, so the terminal's Ctrl-C does not reach it; stdout and stderr are
    # shared, as `caddy start` shares them.
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
    waited = 0.0
    while waited < START_TIMEOUT_S:
        try:
            code = child.wait(timeout=START_POLL_S)
        except subprocess.TimeoutExpired:
            waited += START_POLL_S
        else:
            # Caddy's wording, with Go's text for the exit (exec.ExitError).
            how = f"signal: {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            print(f"Error: {_prog()} process exited with error: {how}", file=sys.stderr)
            return 1
        try:
            admin_request(address, "GET", "/config/", {}, None, timeout=1.0)
        except AdminRequestError:
            continue
        print(
            f"Successfully started {_product()} (pid={child.pid}) -"
            f" {_product()} is running in the background"
        )
        return 0
    child.kill()
    child.wait()
    print(
        f"Error: {_product()} did not confirm its start within {START_TIMEOUT_S:.0f}s",
        file=sys.stderr,
    )
    return 1


# Caddy's default bcrypt cost (caddyauth.BcryptHash: DefaultCost 14) and Go's `$2a$` prefix.
BCRYPT_COST = 14


def cmd_hash_password(args: argparse.Namespace) -> int:
    """`caddy hash-password`: bcrypt the password from --plaintext, else from the terminal
    (asked twice) or the first line of stdin, and print the hash for `basic_auth`."""
    if args.algorithm != "bcrypt":
        print(f"Error: unrecognized hash algorithm: {args.algorithm}", file=sys.stderr)
        return 1
    plaintext: str = args.plaintext or ""
    if not plaintext:
        if sys.stdin.isatty():
            import getpass

            plaintext = getpass.getpass("Enter password: ")
            if getpass.getpass("Confirm password: ") != plaintext:
                print("Error: password does not match", file=sys.stderr)
                return 1
        else:
            plaintext = sys.stdin.readline().rstrip("\r\n")
    if not plaintext:
        print("Error: empty passwords are not allowed", file=sys.stderr)
        return 1
    import bcrypt

    hashed = bcrypt.hashpw(plaintext.encode(), bcrypt.gensalt(BCRYPT_COST, prefix=b"2a"))
    print(hashed.decode())
    return 0


def supported_modules() -> list[str]:
    """Caddy module IDs of what pyproxy serves (handlers the runtime refuses are left out)."""
    from config.model import SUPPORTED_HANDLERS

    modules = ["caddy.adapters.caddyfile", "http", "tls"]
    modules += [f"http.handlers.{name}" for name in SUPPORTED_HANDLERS]
    return sorted(modules)


def cmd_list_modules(args: argparse.Namespace) -> int:
    """`caddy list-modules`: one module ID a line, then Caddy's counts footer. All of
    pyproxy's modules count as standard (they ship with it), so --skip-standard lists none.
    --versions adds pyproxy's version, --packages the Python package ("pyproxy")."""
    modules = [] if args.skip_standard else supported_modules()
    for name in modules:
        fields = [name]
        if args.packages:
            fields.append("pyproxy")
        if args.versions:
            fields.append(f"v{__version__}")
        print(" ".join(fields))
    if not args.skip_standard:
        print(f"\n  Standard modules: {len(modules)}")
    print("\n  Non-standard modules: 0\n\n  Unknown modules: 0")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    from proxy import native

    print(f"pyproxy v{__version__} (Python {sys.version.split()[0]})")
    print(f"native build: {native.STATUS.describe()}")
    return 0


def cmd_help(
    parser: argparse.ArgumentParser,
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    args: argparse.Namespace,
) -> int:
    """`pyproxy help [verb]`, like `caddy help [verb]` (exit 0; 1 for an unknown verb)."""
    if args.verb is None:
        parser.print_help()
        return 0
    if args.verb not in sub.choices:
        return _unknown_verb(parser.prog, args.verb, sorted(sub.choices))
    sub.choices[args.verb].print_help()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description=__doc__.splitlines()[0],
    )
    # Handled in main() before parsing, as `caddy --version`; listed here for --help.
    parser.add_argument("--version", "-v", action="store_true", help="print the version")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("adapt", help="print the JSON config a Caddyfile adapts to")
    p.add_argument("--config", "-c", default=None, help="config file (default ./Caddyfile)")
    p.add_argument("--adapter", "-a", default=None, help="config adapter (default caddyfile)")
    p.add_argument("--pretty", "-p", action="store_true", help="indent the JSON")
    p.add_argument("--validate", action="store_true", help="also validate the result")
    p.set_defaults(func=cmd_adapt)

    for name in ("validate", "check"):
        p = sub.add_parser(name, help="adapt and validate a config without serving it")
        p.add_argument("file", nargs="?", default=None, help="config file")
        p.add_argument("--config", "-c", default=None, help="config file (default ./Caddyfile)")
        p.add_argument("--adapter", "-a", default=None, help="caddyfile or json (by file name)")
        p.set_defaults(func=lambda a: cmd_validate(_merge_file_arg(a)))

    p = sub.add_parser("fmt", help="format a Caddyfile like `caddy fmt`")
    p.add_argument("file", nargs="*", help="Caddyfile, or - for stdin (default ./Caddyfile)")
    p.add_argument("--config", "-c", default=None, help="Caddyfile (alternative to the argument)")
    p.add_argument("--overwrite", "-w", action="store_true", help="write the result back")
    p.add_argument("--diff", "-d", action="store_true", help="print a diff instead")
    p.set_defaults(func=cmd_fmt)

    p = sub.add_parser("help", help="show help for pyproxy or one of its commands")
    p.add_argument("verb", nargs="?", default=None, help="the command to explain")
    p.set_defaults(func=lambda a: cmd_help(parser, sub, a))

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version)

    p = sub.add_parser("list-modules", help="list the Caddy modules pyproxy implements")
    p.add_argument("--packages", action="store_true", help="print package paths")
    p.add_argument("--versions", action="store_true", help="print version information")
    p.add_argument("--skip-standard", "-s", action="store_true", help="skip standard modules")
    p.set_defaults(func=cmd_list_modules)

    p = sub.add_parser("hash-password", help="hash a password for basic_auth (bcrypt)")
    p.add_argument("--plaintext", "-p", default="", help="the password (else tty or stdin)")
    p.add_argument("--algorithm", "-a", default="bcrypt", help="hash algorithm (bcrypt)")
    p.set_defaults(func=cmd_hash_password)

    from proxy import admin_client

    p = sub.add_parser("reload", help="send a new config to a running instance (POST /load)")
    admin_client.add_reload_arguments(p)
    p.set_defaults(func=admin_client.reload_command)

    p = sub.add_parser("stop", help="stop a running instance through its admin API")
    admin_client.add_stop_arguments(p)
    p.set_defaults(func=admin_client.stop_command)

    p = sub.add_parser("environ", help="print the environment as pyproxy sees it")
    admin_client.add_environ_arguments(p)
    p.set_defaults(func=admin_client.environ_command)

    from proxy import trust_cli

    p = sub.add_parser("trust", help="print the local CA root's path; --install trusts it")
    trust_cli.add_trust_arguments(p)
    p.set_defaults(func=trust_cli.trust_command)

    p = sub.add_parser(
        "untrust", help="remove the local CA root from the NSS databases and the system trust store"
    )
    trust_cli.add_untrust_arguments(p)
    p.set_defaults(func=trust_cli.untrust_command)

    p = sub.add_parser("certs", help="list managed certificates: issuer, expiry, next renewal")
    trust_cli.add_certs_arguments(p)
    p.set_defaults(func=trust_cli.certs_command)

    try:
        from proxy.app import add_run_arguments, cmd_run
    except ImportError:
        pass
    else:
        p = sub.add_parser("run", help="serve a config in the foreground")
        add_run_arguments(p)
        p.set_defaults(func=cmd_run)

    from proxy import quick_proxy

    p = sub.add_parser("reverse-proxy", help="a quick reverse proxy from --from to --to")
    quick_proxy.add_reverse_proxy_arguments(p)
    p.set_defaults(func=quick_proxy.reverse_proxy_command)

    p = sub.add_parser("start", help="run in the background; return once it serves")
    p.add_argument("--config", "-c", default=None, help="config file (default ./Caddyfile)")
    p.add_argument("--adapter", "-a", default=None, help="caddyfile or json (by file name)")
    p.add_argument("--envfile", default=None, help="KEY=VALUE file loaded into the environment")
    p.add_argument("--pidfile", default=None, help="write the process id to this file")
    p.add_argument("--watch", action="store_true", help="reload when the config file changes")
    p.set_defaults(func=cmd_start)
    _apply_verb_help(sub)
    return parser


def _merge_file_arg(args: argparse.Namespace) -> argparse.Namespace:
    if args.config is None:
        args.config = args.file
    return args


def _apply_verb_help(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Give each verb's parser its long help (description, example, exit codes)."""
    for name, verb_parser in sub.choices.items():
        if name not in VERB_HELP:
            continue
        what, example, exit_codes = VERB_HELP[name]
        verb_parser.formatter_class = argparse.RawDescriptionHelpFormatter
        verb_parser.description = what
        extra = f"example:\n  {example}\n"
        if verb_parser.epilog:  # `run` documents its exit codes itself
            verb_parser.epilog = extra + "\n" + verb_parser.epilog
        else:
            verb_parser.epilog = f"{extra}\nexit codes:\n  {exit_codes}\n"


def _levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            )
        previous = current
    return previous[-1]


def _unknown_verb(prog: str, verb: str, verbs: Sequence[str]) -> int:
    """Caddy's (cobra's) wording and exit code 1 for an unknown command, with its
    "Did you mean this?" suggestions."""
    print(f'Error: unknown command "{verb}" for "{prog}"', file=sys.stderr)
    # cobra suggests commands within Levenshtein distance 2 or starting with the typed word.
    close = [
        name
        for name in verbs
        if _levenshtein(verb.lower(), name.lower()) <= 2 or name.startswith(verb.lower())
    ]
    if close:
        print("\nDid you mean this?", file=sys.stderr)
        for name in close:
            print(f"\t{name}", file=sys.stderr)
    print(f"\nRun '{prog} --help' for usage.", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args_list = list(sys.argv[1:] if argv is None else argv)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    verbs = sorted(sub.choices)
    if args_list and args_list[0] in ("--version", "-v"):
        return cmd_version(argparse.Namespace())
    if args_list and not args_list[0].startswith("-") and args_list[0] not in sub.choices:
        return _unknown_verb(parser.prog, args_list[0], verbs)
    args = parser.parse_args(args_list)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
