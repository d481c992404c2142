"""What a write to a ModelDeployment's request-id signing keys tells the user (pure).

Shared by the Kopf handler (``handlers/signing.py``) and the local runner
(``platforms/local_signing.py``), so both say the same thing for the same step.
"""

from __future__ import annotations

from mlplane.operator.builders.signing import SigningKeys
from mlplane.operator.conditions import Event


def written_event(
    where: str, before: SigningKeys | None, after: SigningKeys, settle_s: float
) -> Event:
    """The event of a write to existing keys (shared with the local runner)."""
    if before is None:
        return Event("Warning", "SigningKeyReplaced",
                     f"{where} had no readable key: a new one was written; ids issued before "
                     "are refused")  # fmt: skip
    if after.next is not None:
        return Event("Normal", "SigningKeyStaged",
                     f"rotation {after.rotated_for!r}: a new request-id signing key is staged in "
                     f"{where}; every replica accepts it from now on and it signs new ids in "
                     f"{settle_s:g} s, once every pod has it")  # fmt: skip
    return Event("Normal", "SigningKeyRotated",
                 f"rotation {after.rotated_for!r} done in {where}: new ids are signed with the "
                 "new key; ids signed with the previous one stay valid until the next "
                 "rotation")  # fmt: skip
