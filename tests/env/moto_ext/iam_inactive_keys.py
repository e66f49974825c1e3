"""Inactive IAM access keys are refused, as real AWS refuses them.

Real AWS: a request signed with an access key whose status is Inactive (UpdateAccessKey
Status=Inactive) is refused with InvalidClientTokenId ("The security token included in
the request is invalid"), exactly as an unknown or deleted key is; activating it again
makes it work again.

moto instead: with IAM authentication enforced (INITIAL_NO_AUTH_ACTION_COUNT), unknown
and deleted keys are refused and signatures are checked, but a key's status is never
looked at: an inactive key is accepted (measured with moto 5.2.5).

The model: moto's lookup of the signing key (moto.iam.access_control.IAMUserAccessKey)
refuses a key whose status is Inactive the way it refuses an unknown one. Without
authentication enforced (the shared test server) the lookup never runs, so nothing
changes there.

Relied on by: the IAM access key tests (crates/capstan/tests/secret_rotation_iam.rs:
the old key is refused once deactivated, and again once deleted).
"""

from moto.iam import access_control

_init = access_control.IAMUserAccessKey.__init__


def _refusing_inactive(self, account_id, partition, access_key_id, headers):
    _init(self, account_id, partition, access_key_id, headers)
    for user in self.backend.list_users("/", None, None):
        for key in user.access_keys:
            if key.access_key_id == access_key_id and key.status == "Inactive":
                raise access_control.CreateAccessKeyFailure(reason="InvalidId")


access_control.IAMUserAccessKey.__init__ = _refusing_inactive
