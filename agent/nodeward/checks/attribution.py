"""NW109: listening sockets the scan could not attribute to a process because the fd walk
was refused (missing CAP_SYS_PTRACE / CAP_DAC_READ_SEARCH).

Without an owner a socket cannot be identified as the component it is, nor told apart from
a squatter (NW104), so every process-based verdict on it is a guess. Sockets left without
an owner when nothing was refused (kernel-owned sockets, a process that exited mid-walk)
are not this finding. Pure function of the snapshot.
"""

from __future__ import annotations

from ..model import Finding, NodeSnapshot, Severity

_LISTED = 20  # sockets named in the evidence; the count covers all


def attribution_findings(snapshot: NodeSnapshot) -> list[Finding]:
    gaps = snapshot.attribution
    if not gaps.denied:
        return []
    orphans = [s for s in snapshot.sockets if s.process is None]
    if not orphans:
        return []
    missing = gaps.missing()
    where = [f"{'[' + s.address + ']' if ':' in s.address else s.address}:{s.port}/{s.protocol}"
             for s in orphans[:_LISTED]]
    return [Finding(
        id="NW109", severity=Severity.MEDIUM,
        title=(f"{len(orphans)} listening sockets not attributed to a process: the fds of "
               f"{gaps.denied} processes could not be read (missing "
               f"{' and '.join(missing)})"),
        remediation=("Run the agent with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (the "
                     "DaemonSet's and the systemd unit's capability set): without them "
                     "sockets of processes owned by other users or holding more capabilities "
                     "than the agent stay anonymous, and component identity, squatter "
                     "detection (NW104) and process evidence are missing for them."),
        evidence={"unattributed_sockets": len(orphans), "sockets": where,
                  "processes_fd_dir_denied": gaps.fd_dir_denied,
                  "processes_fd_link_denied": gaps.fd_link_denied,
                  "missing_capabilities": list(missing)},
    )]
