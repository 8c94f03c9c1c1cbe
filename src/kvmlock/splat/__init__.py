"""kvmlock.splat: the kernel's lockdep reports, read into data and judged against a document.

A developer meets KVM's locking rules in two places: the document, and a splat from their own
kernel or a fuzzer. This package reads the splat as it is found (dmesg, mail, syzbot, a commit
message), names its locks as the document does, judges each dependency against the document's
rules with the same checker that judges the model, and runs the chain under the explorer::

    from kvmlock import spec, splat
    for report in splat.read_log(open("dmesg.txt").read()):
        deps = splat.judge(report, spec.load("locking.rst"))
        print([(d.src, d.dst, d.verdict) for d in deps])
"""

from kvmlock.splat.judge import judge, spelling
from kvmlock.splat.kinds import KINDS, Kind
from kvmlock.splat.parse import read_log
from kvmlock.splat.program import Outcome, explore_splat
from kvmlock.splat.report import Dependency, Link, LockRef, Splat, decode_usage, decode_wait

__all__ = [
    "KINDS",
    "Dependency",
    "Kind",
    "Link",
    "LockRef",
    "Outcome",
    "Splat",
    "decode_usage",
    "decode_wait",
    "explore_splat",
    "judge",
    "read_log",
    "spelling",
]
