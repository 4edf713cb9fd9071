"""Render the app's units from the jinja2 templates and write them where systemd looks.

Two layers for the socket's ``Service=`` (which release systemd activates when nothing runs):
``/etc/systemd/system/APP.socket.d/`` holds the blessed release and survives a reboot;
``/run/systemd/system/APP.socket.d/`` holds a release on trial and is gone after a reboot, so a host
that reboots during probation comes back on the last good release.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from bloom_agent.config.apps import AppConfig
from bloom_agent.config.paths import SOURCE_TEMPLATES, Paths

if TYPE_CHECKING:
    import jinja2

# Different names on purpose: a drop-in in /etc hides one of the same name in /run, whereas
# different names are all read, in file-name order, the later Service= winning.
BLESSED_DROPIN = "50-bloom-release.conf"
TRIAL_DROPIN = "60-bloom-trial.conf"


# The first line of every unit file the agent writes: how it knows its own from a unit it must not touch.
MARK = "# Written by bloom-agent"
# The last line of a unit the agent rendered: a digest of what it was made from (the app's settings,
# the templates, this module) and of the text above it. A start-up that finds every unit current does
# not render, so it does not load jinja2 (4 MB of the agent's memory); a hand edit is still overwritten.
STAMP = "# bloom-agent inputs: "


@dataclass(frozen=True)
class SocketChange:
    """How the app file's socket differs from the one systemd has (the file the agent last wrote)."""

    old: tuple[str, ...]      # the addresses in the written APP.socket
    new: tuple[str, ...]      # the addresses in the app file
    written: bool             # an APP.socket is on disk
    only_listen: bool         # nothing but the addresses differs

    @property
    def added(self) -> tuple[str, ...]:
        return tuple(a for a in self.new if a not in self.old)

    @property
    def removed(self) -> tuple[str, ...]:
        return tuple(a for a in self.old if a not in self.new)

    @property
    def way(self) -> str:
        """``unchanged``; ``drop``: addresses only removed, which a daemon-reload takes from the running
        socket while it keeps the others open; ``rebind``: anything else, which systemd applies only
        to a socket it opens anew (systemd 252 does not open added addresses on a running socket)."""
        if self.written and self.old == self.new and self.only_listen:
            return "unchanged"
        if self.written and self.only_listen and self.removed and not self.added:
            return "drop"
        return "rebind"

    def describe(self) -> str:
        parts = [f"adds {', '.join(self.added)}"] if self.added else []
        parts += [f"removes {', '.join(self.removed)}"] if self.removed else []
        if not self.only_listen:
            parts.append("changes its other settings")
        return "; ".join(parts) or "reorders its addresses"


def listen_in(text: str) -> tuple[str, ...]:
    """The ListenStream= addresses of a socket unit the agent wrote (one per line, unquoted)."""
    return tuple(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ListenStream="))


@dataclass(frozen=True)
class UnitPaths:
    etc: Path
    run: Path
    templates: tuple[Path, ...] = (SOURCE_TEMPLATES,)
    vendor: tuple[Path, ...] = ()


def _environment(templates: tuple[Path, ...]) -> "jinja2.Environment":
    import jinja2  # only when a unit is rendered; see STAMP

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in templates if d.is_dir()]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.globals.update(seconds=_seconds, quote=_quote, quote_env=_quote_env)
    return env


def _seconds(value: float) -> str:
    return f"{int(value)}s" if float(value).is_integer() else f"{int(value * 1000)}ms"


def _escape(word: str) -> str:
    """systemd expands % specifiers and $ variables in unit files: double them, and escape quoting."""
    return word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")


def _quote(word: str) -> str:
    return f'"{_escape(word)}"'


def _quote_env(assignment: str) -> str:
    """Environment= expands % specifiers but not $VARIABLES: only % is doubled."""
    escaped = assignment.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def exec_start(app: AppConfig) -> str:
    argv = app.argv
    # The one specifier we mean: %i, the release's instance name, which is also its directory's name.
    program = _escape(argv[0]) if argv[0].startswith("/") else f"{_escape(str(app.releases_dir))}/%i/{_escape(argv[0])}"
    return " ".join([f'"{program}"'] + [_quote(a) for a in argv[1:]])


def render_socket(app: AppConfig, templates: tuple[Path, ...] = (SOURCE_TEMPLATES,)) -> str:
    return _environment(templates).get_template("app.socket.j2").render(
        app=app, unix_sockets=any(a.startswith("/") for a in app.listen),
        ip_sockets=any(not a.startswith("/") for a in app.listen),
    )


def render_service(app: AppConfig, templates: tuple[Path, ...] = (SOURCE_TEMPLATES,)) -> str:
    # %i is the instance (the release's instance name); the release directory is named the same.
    return _environment(templates).get_template("app@.service.j2").render(
        app=app, release_dir=f"{_escape(str(app.releases_dir))}/%i", exec_start=exec_start(app)
    )


def render_release_dropin(app: AppConfig, instance: str) -> str:
    return (
        f"{MARK}: the release systemd starts when a connection arrives and none runs.\n"
        f"[Socket]\nService={app.instance_unit(instance)}\n"
    )


def _stamp(inputs: str, body: str) -> str:
    return f"{STAMP}{hashlib.sha256((inputs + body).encode()).hexdigest()}\n"


def _write_rendered(path: Path, inputs: str, render: Callable[[], str]) -> bool:
    """Render and write a unit unless its stamp says it is current; whether its text (less the stamp) changed."""
    try:
        current = path.read_text()
    except FileNotFoundError:
        current = ""
    lines = current.splitlines(keepends=True)
    if lines and lines[-1].startswith(STAMP):
        body = "".join(lines[:-1])
        if lines[-1] == _stamp(inputs, body):
            return False
    else:
        body = current
    text = render()
    text += "" if text.endswith("\n") else "\n"  # the stamp is a line of its own
    write_if_changed(path, text + _stamp(inputs, text))
    return text != body


def _marked(path: Path) -> bool:
    try:
        with open(path) as fh:
            return fh.readline().startswith(MARK)
    except OSError:
        return False


def write_if_changed(path: Path, text: str) -> bool:
    """Atomic replace (temp file, fsync, rename); returns whether anything changed."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_if_present(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


class UnitWriter:
    def __init__(self, paths: UnitPaths) -> None:
        self.paths = paths

    @classmethod
    def for_paths(cls, paths: Paths) -> "UnitWriter":
        return cls(UnitPaths(etc=paths.unit_dir, run=paths.runtime_unit_dir, templates=paths.templates,
                             vendor=paths.vendor_unit_dirs))

    def foreign_unit(self, app: AppConfig) -> Path | None:
        """A unit by one of the app's names (APP.socket, APP@.service, APP.service) that the agent did
        not write: an app named 'ssh' or 'dbus' would take over a unit of the system."""
        names = (app.socket_unit, app.template_unit, f"{app.name}.service")
        for directory in (self.paths.etc, self.paths.run, *self.paths.vendor):
            for name in names:
                path = directory / name
                if not path.exists() and not path.is_symlink():
                    continue
                if directory != self.paths.etc or path.is_symlink() or not _marked(path):
                    return path
        return None

    def write_app_units(self, app: AppConfig, socket: bool = True) -> tuple[bool, bool]:
        """Write the service template, and the socket unless told not to (a socket in use changes only
        by ``bloomctl app relisten`` or a switch); returns (socket changed, service template changed):
        whether what systemd reads changed, not the stamp line, which is a comment to systemd."""
        socket_changed = self.write_socket(app) if socket else False
        return socket_changed, _write_rendered(self.paths.etc / app.template_unit, self._inputs(app),
                                               lambda: render_service(app, self.paths.templates))

    def write_socket(self, app: AppConfig) -> bool:
        return _write_rendered(self.paths.etc / app.socket_unit, self._inputs(app),
                               lambda: render_socket(app, self.paths.templates))

    def _inputs(self, app: AppConfig) -> str:
        digest = hashlib.sha256(Path(__file__).read_bytes())
        digest.update(repr(app).encode())
        for directory in self.paths.templates:
            if directory.is_dir():
                for path in sorted(p for p in directory.iterdir() if p.is_file()):
                    digest.update(b"\0" + path.name.encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()

    def written_socket(self, app: AppConfig) -> str | None:
        try:
            return (self.paths.etc / app.socket_unit).read_text()
        except FileNotFoundError:
            return None

    def restore_socket(self, app: AppConfig, text: str) -> None:
        """Put back a socket unit as it was (a change that systemd could not bind)."""
        write_if_changed(self.paths.etc / app.socket_unit, text)

    def socket_change(self, app: AppConfig) -> SocketChange:
        text = self.written_socket(app)
        if text is None:
            return SocketChange((), app.listen, written=False, only_listen=False)
        old = listen_in(text)
        lines = text.splitlines(keepends=True)
        body = "".join(lines[:-1]) if lines and lines[-1].startswith(STAMP) else text
        if lines and lines[-1] == _stamp(self._inputs(app), body):
            # made from these very inputs: nothing to render (a start-up stays without jinja2)
            return SocketChange(old, app.listen, written=True, only_listen=True)
        # The file as it would be with the old addresses: equal means nothing but the addresses changed.
        same_rest = render_socket(dataclasses.replace(app, listen=old), self.paths.templates) == body
        return SocketChange(old, app.listen, written=True, only_listen=same_rest)

    def dropin(self, app: AppConfig, layer: str) -> Path:
        if layer == "etc":
            return self.paths.etc / f"{app.socket_unit}.d" / BLESSED_DROPIN
        return self.paths.run / f"{app.socket_unit}.d" / TRIAL_DROPIN

    def point_socket(self, app: AppConfig, instance: str, *, trial: bool) -> bool:
        """Trial: only the /run layer names the new release. Blessed: /etc names it, /run is cleared."""
        text = render_release_dropin(app, instance)
        if trial:
            return write_if_changed(self.dropin(app, "run"), text)
        changed = write_if_changed(self.dropin(app, "etc"), text)
        return remove_if_present(self.dropin(app, "run")) or changed

    def pointed_instance(self, app: AppConfig) -> str | None:
        """What the socket activates now: the trial layer wins over the blessed one (it sorts after it)."""
        for layer in ("run", "etc"):
            try:
                text = self.dropin(app, layer).read_text()
            except FileNotFoundError:
                continue
            for line in text.splitlines():
                if line.startswith("Service="):
                    unit = line.split("=", 1)[1].strip()
                    return unit.removeprefix(f"{app.name}@").removesuffix(".service")
        return None

    def clear_socket_pointer(self, app: AppConfig) -> None:
        remove_if_present(self.dropin(app, "run"))
        remove_if_present(self.dropin(app, "etc"))

    def remove_app_units(self, app: AppConfig) -> None:
        """The app's units and the agent's drop-ins; a drop-in directory left empty goes too (the
        operator's own drop-ins, if any, stay, with their directory)."""
        for path in (self.paths.etc / app.socket_unit, self.paths.etc / app.template_unit,
                     self.dropin(app, "etc"), self.dropin(app, "run")):
            remove_if_present(path)
        for layer in ("etc", "run"):
            try:
                self.dropin(app, layer).parent.rmdir()
            except OSError:
                pass  # not there, or not empty
