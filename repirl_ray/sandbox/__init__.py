"""The code sandbox, a security boundary of its own: it runs a policy's (hostile) program against
a problem's tests and says whether it passed, and nothing else.

- runner.py: Sandbox (bwrap namespaces, or a plain child with rlimits), the judge process, the
  check a run does before any actor starts (check_sandbox); its docstring says what is isolated
  and why the verdict cannot be forged;
- seccomp.py: the system-call filter every process of a run carries;
- cgroup.py: one memory and process bound for a whole run.

Knows nothing of tasks or data: the code task (tasks/code.py) calls it.
"""

from repirl_ray.sandbox.runner import SANDBOXES, Sandbox, SandboxResult, check_sandbox

__all__ = ["SANDBOXES", "Sandbox", "SandboxResult", "check_sandbox"]
