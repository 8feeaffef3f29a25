"""Policy files: loading and validating ``policies/*.yaml``, and explaining decisions."""

from broker.policy.explain import explain, explain_json
from broker.policy.loader import PolicyError, PolicyProblem, check_policies, load_policies

__all__ = [
    "PolicyError",
    "PolicyProblem",
    "check_policies",
    "explain",
    "explain_json",
    "load_policies",
]
