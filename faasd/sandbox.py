"""The sandbox every function process runs in: Linux namespaces, entered by the process itself.

A function process (a child forked from its environment's zygote, or a fresh
interpreter) calls :func:`enter` before it reads its task. That:

1. unshares a user, mount, PID, IPC and UTS namespace (and a network namespace
   unless the model asked for ``internet_access``). The process becomes user
   65534 ("nobody") of its own user namespace, mapped to the worker's user, so
   it needs no privilege on the host;
2. forks. The child is process 1 of the new PID namespace and goes on to run the
   function; the parent stays behind as a relay that waits for it and exits with
   its status. When process 1 ends, the kernel kills every process left in its
   namespace: nothing the function started (``setsid`` or not) outlives it;
3. builds a new root in a tmpfs: the system directories (``/usr``, ``/etc``,
   ...) and the function's Python read-only, the paths the worker names
   read-only (project files, input objects, cached columns) or read-write (the
   task's output directory), a fresh ``/proc`` of its PID namespace, a minimal
   ``/dev``, and ``/tmp``, a tmpfs of the scratch size the worker gives (the
   worker counts its bytes against the function's memory). Paths the worker
   hides (its home, token, shared memory, work directory) are covered where
   they fall inside a bound directory. Then it pivots into that root and
   detaches the old one;
4. drops every capability (bounding set included), sets no-new-privileges and
   resource limits (file size, open files, no core files).

Everything the function sees is thereby read-only except ``/tmp`` and its
output directory; a read-only bind mount refuses writes through ``open`` and
through a writable shared ``mmap`` alike, and with no capabilities the function
cannot remount it (a nested user namespace it may create only sees the
mounts locked).

The same system calls bubblewrap makes, made directly from Python through
ctypes: a forked child needs no ``exec``, which keeps a sandboxed start within a
few milliseconds of an unsandboxed one (``bench/overhead.py``).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import resource
import signal
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import msgspec

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# System call numbers that glibc has no wrapper for.
_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "mount_setattr": 442},
    "aarch64": {"pivot_root": 41, "mount_setattr": 442},
}

SANDBOX_FAILED = 71  # the exit status of a process whose sandbox could not be built
SANDBOX_UID = 65534  # "nobody": the user a function is inside its namespace
STAGE = "/tmp"  # where the new root's tmpfs is mounted (in the new mount namespace) before it is /
HOST = "/.host"  # where the host's root is while the new root is put together
ROOT_SIZE = 1 << 20  # the new root's own tmpfs: only mount points and links
OPEN_FILES = 16384
# What every function sees of the host, read-only, where it exists.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/sys")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# Kernel settings a process of the new /proc could otherwise write to, as bubblewrap covers.
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus")


class SandboxSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What one function process may see. Paths are absolute, bound at the same place,
    except ``moved``."""

    ro: list[str] = []
    rw: list[str] = []
    # Writable directories bound elsewhere: the path inside -> the host's directory (so
    # that the function does not learn where the host keeps it).
    moved: dict[str, str] = {}
    # Files bound read-only elsewhere: the path inside (an existing mount point under a
    # directory bound above) -> the host's file.
    bound: dict[str, str] = {}
    # Covered (an empty read-only directory, or /dev/null for a file) where they lie
    # inside a directory bound above.
    hide: list[str] = []
    # Size of the writable /tmp, in bytes.
    scratch: int = 64 << 20
    # Largest file it may write, in bytes (0: no limit).
    file_size: int = 0
    network: bool = False
    cwd: str = "/"


class SandboxError(OSError):
    """The sandbox could not be built (the kernel refused a step)."""


_libc: Any = None


def _c() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    return _libc


def _check(result: int, what: str) -> None:
    if result < 0:
        err = ctypes.get_errno()
        raise SandboxError(err, f"sandbox: {what}: {os.strerror(err)}")


def _syscall(name: str, *args: Any) -> int:
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        raise SandboxError(errno.ENOSYS, f"sandbox: no {name} system call known for {platform.machine()}")
    return int(_c().syscall(ctypes.c_long(numbers[name]), *args))


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _c().mount(
            source.encode() if source else None, target.encode(),
            fstype.encode() if fstype else None, ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source or fstype} on {target}",
    )


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64),
    ]


def _read_only(target: str, recursive: bool = True) -> None:
    """Make ``target`` (and every mount under it) read-only, nosuid, nodev; only adds flags,
    so the flags locked on mounts from the host are kept."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
    _check(
        _syscall(
            "mount_setattr", ctypes.c_int(AT_FDCWD), target.encode(),
            ctypes.c_uint(AT_RECURSIVE if recursive else 0), ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        ),
        f"make {target} read-only",
    )


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _inside(path: str, parents: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in parents)


def _mount_point(target: str, is_dir: bool) -> None:
    if is_dir:
        os.makedirs(target, exist_ok=True)
    elif not os.path.lexists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))


def _bind(path: str, writable: bool, done: list[str], hidden: Sequence[str] = ()) -> None:
    """Bind the host's ``path`` (seen under HOST) at ``path``; a link is made a link (``/lib
    -> usr/lib``) and its target bound. ``done``: what is bound already, and by this;
    ``hidden``: what is covered (a path under it is bound again)."""
    path = os.path.normpath(path)
    if path == "/":
        raise SandboxError(errno.EINVAL, "sandbox: the host's whole root cannot be bound")
    source = HOST + path
    if not writable and _inside(path, done) and not _inside(path, hidden) and not os.path.islink(source):
        return
    if os.path.islink(source):
        link = os.readlink(source)
        if not os.path.lexists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.symlink(link, path)
        _bind(os.path.join(os.path.dirname(path), link), writable, done, hidden)
        return
    if not os.path.exists(source):
        return
    _mount_point(path, os.path.isdir(source))
    _mount(source, path, None, MS_BIND | MS_REC)
    if not writable:
        _read_only(path)
    done.append(path)


@functools.cache
def python_paths() -> list[str]:
    """Where this interpreter's files are: its prefixes, the directories on ``sys.path``,
    and where links in them point (an environment's links to the faas runtime, the
    links of a checkout's ``faas/`` package), two levels deep."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable))}

    def links(directory: str, depth: int) -> None:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return
        for entry in entries:
            if entry.is_symlink():
                real = os.path.realpath(entry.path)
                if os.path.isdir(real):
                    paths.add(real)
                    if depth:
                        links(real, depth - 1)
                elif os.path.exists(real):
                    paths.add(os.path.dirname(real))

    for p in sys.path:
        if not p or not os.path.isabs(p) or not os.path.exists(p):
            continue
        directory = p if os.path.isdir(p) else os.path.dirname(p)
        paths.update((directory, os.path.realpath(directory)))
        links(directory, 1)
    return sorted(p for p in paths if p != "/")


def enter(spec: SandboxSpec, *, keep_fds: Sequence[int] = ()) -> None:
    """Put the calling process into a new sandbox; returns in process 1 of the sandbox.

    :func:`prepare` then :func:`finish`. Call it from a single-threaded process."""
    prepare(network=spec.network, keep_fds=keep_fds)
    finish(spec)


def prepare(*, network: bool = False, keep_fds: Sequence[int] = ()) -> None:
    """The part of a sandbox every function shares; returns in process 1 of the sandbox.

    The calling process never returns: it stays as the relay that waits for the
    sandboxed one and exits with its status (``keep_fds``: descriptors only the
    sandboxed process keeps; the relay closes them). Raises SandboxError if the kernel
    refuses a step before the fork; after it, a failure ends the process (status 71)."""
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if not network:
        flags |= CLONE_NEWNET
    _check(_c().unshare(ctypes.c_int(flags)), "unshare the namespaces")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{SANDBOX_UID} {uid} 1\n")
    _write("/proc/self/gid_map", f"{SANDBOX_UID} {gid} 1\n")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    pid = os.fork()
    if pid:
        _relay(pid, keep_fds)
    _guarded(_prepare_root)


def _guarded(step: Any, *args: Any) -> None:
    try:
        step(*args)
    except BaseException as exc:  # noqa: BLE001 - a half-built sandbox never runs anything
        try:
            os.write(2, f"faas: cannot build the function's sandbox: {exc}\n".encode())
        finally:
            os._exit(SANDBOX_FAILED)


def _relay(pid: int, fds: Sequence[int]) -> NoReturn:
    """The process left outside the PID namespace: the worker's handle on the function."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    code = 70
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
            except InterruptedError:
                continue
            code = os.waitstatus_to_exitcode(status)
            break
        if code < 0:  # killed by a signal: end the same way, so the worker can say which
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
    finally:
        os._exit(code if code >= 0 else 128 - code)


def _prepare_root() -> None:
    # The relay is in the same process group, which is what the worker kills; this
    # covers the relay dying alone.
    _check(_c().prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "set the parent-death signal")
    paths = sorted({os.path.normpath(p) for p in (*SYSTEM_PATHS, *python_paths())})
    _mount("tmpfs", STAGE, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0755,size={ROOT_SIZE}")
    os.mkdir(STAGE + HOST)
    os.chdir(STAGE)
    # The new root becomes /, the host's root stays reachable under HOST until finish().
    _check(_syscall("pivot_root", b".", HOST.lstrip("/").encode()), "pivot into the new root")
    os.chdir("/")
    done: list[str] = []
    # Directories first, so that a link's target (/lib -> usr/lib) is already there.
    for path in sorted(paths, key=lambda p: os.path.islink(HOST + p)):
        _bind(path, False, done)
    _devices()
    os.makedirs("/proc", exist_ok=True)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in PROC_READ_ONLY:
        target = f"/proc/{name}"
        if os.path.exists(target):
            _mount(target, target, None, MS_BIND | MS_REC)
            _read_only(target)
    _prepared.extend(done)


_prepared: list[str] = []


def finish(spec: SandboxSpec) -> None:
    """The function's own part of the sandbox, in the process :func:`prepare` returned in:
    its paths, the hidden ones, its scratch; then the host goes and the privileges with it."""
    _guarded(_finish, spec)


def _finish(spec: SandboxSpec) -> None:
    done = list(_prepared)
    # Scratch first: what lay under the host's /tmp is gone with it, and the function's own
    # paths may lie there (they are bound on top).
    os.makedirs("/tmp", exist_ok=True)
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={max(spec.scratch, 4096)}")
    # Python directories under the host's /tmp (an environment there) are bound again on top.
    under_tmp = [p for p in done if _inside(p, ["/tmp"])]
    done = [p for p in done if p not in under_tmp]
    for path in under_tmp:
        _bind(path, False, done)
    # Hidden directories are covered with an empty tmpfs, writable only until the
    # function's own paths under them (if any) have their mount points.
    hidden: list[str] = []
    for path in spec.hide:
        path = os.path.normpath(path)
        if path == "/" or not _inside(path, done) or not os.path.lexists(path):
            continue
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
            hidden.append(path)
        else:
            _mount("/dev/null", path, None, MS_BIND)
    for path in sorted({os.path.normpath(p) for p in spec.ro}):
        _bind(path, False, done, hidden)
    for path in sorted({os.path.normpath(p) for p in spec.rw}):
        _bind(path, True, done, hidden)
    for inside, source in sorted(spec.moved.items()):
        if os.path.isdir(HOST + source):
            _mount_point(inside, is_dir=True)
            _mount(HOST + source, inside, None, MS_BIND | MS_REC)
    for inside, source in sorted(spec.bound.items()):
        _mount(HOST + source, inside, None, MS_BIND)
        _read_only(inside)
    for path in hidden:
        _read_only(path, recursive=False)
    _check(_c().umount2(HOST.encode(), MNT_DETACH), "detach the host's root")
    os.rmdir(HOST)
    # Nothing is written outside /tmp and the writable paths.
    _read_only("/", recursive=False)
    _limits(spec)
    _drop_capabilities()
    os.chdir(spec.cwd)


def _devices() -> None:
    dev = "/dev"
    os.makedirs(dev, exist_ok=True)
    for name in DEVICES:
        source = f"{HOST}/dev/{name}"
        if not os.path.exists(source):
            continue
        _mount_point(f"{dev}/{name}", is_dir=False)
        _mount(source, f"{dev}/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")


def _limits(spec: SandboxSpec) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    files = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
    if spec.file_size:
        resource.setrlimit(resource.RLIMIT_FSIZE, (spec.file_size, spec.file_size))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> None:
    libc = _c()
    last = 40
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        pass
    for cap in range(last + 1):
        _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    _check(libc.capset(ctypes.byref(header), data), "drop capabilities")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no-new-privileges")


def probe() -> str | None:
    """Why a sandbox cannot be built on this host, or None if it can (builds one to see)."""
    if not sys.platform.startswith("linux"):
        return f"function sandboxes need Linux namespaces; this is {sys.platform}"
    if platform.machine() not in _SYSCALLS:
        return f"function sandboxes are not supported on {platform.machine()}"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 1
        try:
            enter(SandboxSpec(scratch=1 << 20), keep_fds=(w,))
            # Inside: the root is read-only and nothing of the host's /tmp shows.
            try:
                open("/etc/faas-sandbox-probe", "w")
                os.write(w, b"the root is writable inside the sandbox")
            except OSError:
                os.write(w, b"ok")
                code = 0
        except BaseException as exc:  # noqa: BLE001 - reported through the pipe
            os.write(w, str(exc).encode()[:500])
        os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 4096):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    said = b"".join(chunks).decode("utf-8", "replace").strip()
    if os.waitstatus_to_exitcode(status) == 0 and said == "ok":
        return None
    return said or f"the probe exited with {os.waitstatus_to_exitcode(status)}"


async def sandbox_unavailable() -> str | None:
    """:func:`probe`, run in a fresh interpreter (the caller may have threads, which a
    process must not have when it forks to run Python); why sandboxes cannot be built
    here, or None."""
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from faas.faasd.sandbox import probe; why = probe(); "
        "print(why or ''); sys.exit(1 if why else 0)", stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    said = out.decode("utf-8", "replace").strip()
    if proc.returncode == 0:
        return None
    return said.splitlines()[-1] if said else f"the probe exited with {proc.returncode}"


def main() -> int:
    """``python -m faas.faasd.sandbox``: whether function sandboxes work on this host."""
    why = probe()
    if why is None:
        print("function sandboxes work on this host")
        return 0
    print(f"function sandboxes cannot be built on this host: {why}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
