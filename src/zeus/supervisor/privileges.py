"""Who the workers run as: user, groups and umask, resolved once in the front, applied in
the child between fork and exec.

Theory of operation
-------------------
The front resolves names to ids once, at configuration time (:func:`resolve`), so a user or
group that does not exist is a one-line ConfigError before anything starts, and the child
never reads ``/etc/passwd`` (NSS lookups are not something to do between fork and exec).

The drop itself (:meth:`Privileges.apply`) runs in ``preexec``, after the steps that still
need root (joining the worker's cgroup, setting rlimits above the current hard limit) and
before exec, so no application code ever runs with the front's credentials.  The order is
the one that works and cannot be undone: ``setgroups`` (the supplementary groups: the user's,
or none) and ``setgid`` need root, so both come before ``setuid``, which gives root away for
good (as root, ``setuid`` sets the real, effective and saved ids alike).  Changing
credentials clears the parent-death signal (prctl(2)), so the caller sets it again after.

What still works after the drop, and why:

* the worker's region and doorbell are inherited descriptors: access was checked when they
  were opened, not when they are used, so the worker maps its region as any other user;
* the front keeps its own credentials (root): it may signal, watch (pidfd) and read
  ``/proc/PID`` of workers of any user.  Gunicorn's arbiter does the same: only workers drop.

Refusing root: a front that runs as root and would start root workers (no ``user``, or a
user whose uid is 0) is refused unless ``allow_root`` says it is meant.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from zeus.errors import ConfigError

ROOT_REFUSED = (
    "refusing to run workers as root: give --user NAME (and --group) to drop their "
    "privileges, or --allow-root (ZEUS_ALLOW_ROOT=1) if root workers are meant"
)


@dataclass(frozen=True, slots=True)
class Privileges:
    """Credentials a worker takes before exec; None leaves that part as the front has it."""

    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] | None = None  # supplementary groups (set only with gid)
    umask: int | None = None
    user: str = ""  # names, for messages
    group: str = ""

    def changes_identity(self) -> bool:
        """Whether applying these changes the process's user or groups."""
        return self.uid is not None or self.gid is not None

    def apply(self) -> None:
        """Take these credentials (in the child, before exec); OSError if not permitted."""
        if self.umask is not None:
            os.umask(self.umask)
        if self.gid is not None:
            os.setgroups(list(self.groups or ()))
            os.setgid(self.gid)
        if self.uid is not None:
            os.setuid(self.uid)

    def __repr__(self) -> str:
        who = f"{self.user or self.uid}:{self.group or self.gid}"
        mask = "" if self.umask is None else f" umask={self.umask:04o}"
        return f"<Privileges {who}{mask}>"


def lookup_user(name: str) -> pwd.struct_passwd:
    """The passwd entry of a user name or numeric uid; ConfigError if there is none."""
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"user {name!r} does not exist") from None


def lookup_group(name: str) -> int:
    """The gid of a group name or numeric gid; ConfigError if there is none."""
    try:
        return grp.getgrgid(int(name)).gr_gid if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"group {name!r} does not exist") from None


def resolve(user: str | None, group: str | None, umask: int | None, *,
            allow_root: bool) -> Privileges | None:
    """The workers' credentials from the settings; None when nothing changes.

    ConfigError (one line) when a user or group does not exist, when switching needs root
    and the front is not root, and when root workers would start without ``allow_root``.
    """
    uid = gid = None
    groups: tuple[int, ...] | None = None
    user_name = group_name = ""
    if user:
        entry = lookup_user(user)
        uid, gid, user_name = entry.pw_uid, entry.pw_gid, entry.pw_name
    if group:
        gid, group_name = lookup_group(group), group
    if gid is not None:
        # The user's supplementary groups (as login(1) would set them), or none at all: a
        # worker must not keep root's groups.
        groups = tuple(os.getgrouplist(user_name, gid)) if user_name else ()
    euid = os.geteuid()
    if euid != 0:
        # An unprivileged front can only start workers as itself: accept a no-op, refuse
        # anything else here rather than as a failed exec later.
        if (uid is not None and uid != euid) or (gid is not None and gid != os.getegid()):
            raise ConfigError(f"--user/--group need zeus to start as root (it runs as uid "
                              f"{euid})")
        uid = gid = groups = None
    elif (uid is None or uid == 0) and not allow_root:
        raise ConfigError(ROOT_REFUSED)
    if uid is None and gid is None and umask is None:
        return None
    return Privileges(uid=uid, gid=gid, groups=groups, umask=umask, user=user_name,
                      group=group_name)
